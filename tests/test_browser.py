"""Issue #26 point 4: the leaderboard page and a run's report.html, opened in headless Chromium.

Debian's ``chromium`` and ``chromium-driver`` packages (``.ci/run`` installs them); nothing is downloaded.
Without them the tests skip, unless ``BENCH_REQUIRE_BROWSER`` is set (CI), where they fail.
``BENCH_SCREENSHOTS=docs/img`` saves the two screenshots the docs show.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchsuite.cli import main
from benchsuite.reporting.leaderboard import write_leaderboard
from tests.report_run import report_run

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def _missing() -> str | None:
    if not (CHROMIUM.is_file() and DRIVER.is_file()):
        return f"{CHROMIUM} or {DRIVER} not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed (pip install -e '.[test]')"
    return None


def _require_browser() -> None:
    """Skip without a browser, or fail where one is required (CI)."""
    if reason := _missing():
        if os.environ.get("BENCH_REQUIRE_BROWSER"):
            pytest.fail(f"BENCH_REQUIRE_BROWSER is set but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with pytest.MonkeyPatch.context() as env:
        env.setenv("SE_OFFLINE", "true")  # Selenium Manager must never fetch a driver or a browser
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1400,1000", "--disable-extensions", "--no-first-run"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(executable_path=str(DRIVER)), options=options)
        driver.set_page_load_timeout(30)
        yield driver
        driver.quit()


def _open(driver, page: Path) -> None:
    driver.get(page.resolve().as_uri())
    driver.get_log("browser")  # what an earlier page left
    driver.refresh()


def _console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]


def _screenshot(driver, name: str) -> None:
    if folder := os.environ.get("BENCH_SCREENSHOTS"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def _images_loaded(driver) -> tuple[int, list[str]]:
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0]);")
    return len(images), [alt for alt, ok in images if not ok]


def test_leaderboard_page_sorts_and_filters(browser, tmp_path):
    from selenium.webdriver.common.by import By

    page = write_leaderboard(REPO / "leaderboards", tmp_path / "leaderboard")
    _open(browser, page)
    assert browser.title == "benchsuite leaderboard"
    table = browser.find_element(By.ID, "synthetic__htba__probe")
    headers = [th.text for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
    column = headers.index("patched_asr")

    def values() -> list[float]:
        cells = table.find_elements(By.CSS_SELECTOR, f"tbody tr td:nth-child({column + 1})")
        return [float(c.get_attribute("data-value")) for c in cells if c.get_attribute("data-value")]

    before = values()
    assert len(before) >= 3 and before != sorted(before)
    header = table.find_elements(By.CSS_SELECTOR, "thead th")[column]
    header.click()
    assert values() == sorted(before) and header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert values() == sorted(before, reverse=True)

    rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
    box = browser.find_element(By.CSS_SELECTOR, 'input[data-table="synthetic__htba__probe"]')
    box.send_keys("poisoncam")
    shown = [r for r in rows if r.is_displayed()]
    assert 0 < len(shown) < len(rows) and all("poisoncam" in r.text for r in shown)
    box.clear()
    box.send_keys(" ")  # an empty filter shows every row again
    assert all(r.is_displayed() for r in rows)

    summary = rows[0].find_element(By.CSS_SELECTOR, "details.prov summary")
    summary.click()
    assert "git_commit" in rows[0].text and "hardware" in rows[0].text
    assert _images_loaded(browser)[1] == []
    assert _console_errors(browser) == []
    box.clear()  # the screenshot shows the box's hint
    browser.execute_script("document.getElementById('synthetic__htba').scrollIntoView()")
    _screenshot(browser, "leaderboard.png")


def test_report_shows_the_attack_first_and_every_image_loads(browser, tmp_path, tiny_splits):
    from selenium.webdriver.common.by import By

    run = report_run(tmp_path / "run", tiny_splits)
    assert main(["report", str(run)]) == 0
    _open(browser, run / "report.html")
    count, broken = _images_loaded(browser)
    assert count >= 4 and broken == []  # three attack pictures and the ASR chart
    attacks = browser.find_element(By.XPATH, "//h2[text()='Attacks']")
    first_table = browser.find_element(By.TAG_NAME, "table")
    assert attacks.location["y"] < first_table.location["y"]
    assert _console_errors(browser) == []
    _screenshot(browser, "report.png")


def test_missing_browser_is_a_failure_when_required(monkeypatch):
    """The skip must never hide these tests in CI: with BENCH_REQUIRE_BROWSER a missing browser fails."""
    monkeypatch.setattr("tests.test_browser.CHROMIUM", Path("/nonexistent/chromium"))
    monkeypatch.setenv("BENCH_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="not installed"):
        _require_browser()
    monkeypatch.delenv("BENCH_REQUIRE_BROWSER")
    with pytest.raises(pytest.skip.Exception):
        _require_browser()
