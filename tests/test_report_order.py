"""Issue #26 point 5: the report shows the attack (trigger, poisoned and patched images) before any table."""

from __future__ import annotations

from benchsuite.cli import main
from tests.report_run import report_run


def test_the_attack_section_precedes_the_first_table(tmp_path, tiny_splits):
    run = report_run(tmp_path / "run", tiny_splits)
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    attacks = page.index("<h2>Attacks</h2>")
    assert attacks < page.index("<table")  # before the provenance and the result tables
    first_image = page.index("<img")
    assert attacks < first_image < page.index("<table")
    assert page[first_image:].startswith('<img src="data:image/png;base64,') and 'alt="attack_triggers.png"' in \
        page[first_image:first_image + 400_000].split(">", 1)[0]
    for name in ("attack_triggers.png", "attack_poisoned.png", "attack_patched_t0.png"):
        assert page.index(f'alt="{name}"') < page.index("<table")
