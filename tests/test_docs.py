"""The documentation (issue #26): a front-page README, every page in the site, a CLI reference from the parser."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mkdocs_hooks
from benchsuite.cli import parser

REPO = Path(__file__).resolve().parents[1]
GENERATED = {"docs/cli.md"}  # written by mkdocs_hooks.py at build time, git-ignored


def test_cli_reference_names_every_command_and_option():
    text = mkdocs_hooks.cli_markdown(parser())
    sub = next(a for a in parser()._actions if a.dest == "command")
    for name, command in sub.choices.items():
        assert f"## bench {name}\n" in text
        for action in command._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in text, (name, flag)
    assert "(default: `smoke`)" in text and "`--leaderboards`" in text


def test_options_tables_hold_each_default_and_the_papers_value():
    from benchsuite.defenses.patchsearch import PatchSearchConfig

    table = mkdocs_hooks.options_markdown(PatchSearchConfig)
    assert "| `cam_layer` | `'auto'` | Grad-CAM layer:" in table  # the comment above the field
    assert "| `num_clusters` | `0` | 0 = clusters_per_class x classes; paper l = 1000 on ImageNet-100 |" in table
    assert "| `cluster_score` | `'max'` | paper and PS code" in table  # the subclass's own line wins
    page = "intro\n<!-- options: benchsuite.defenses.patchsearch:PatchSearchConfig -->\nend"
    assert mkdocs_hooks.on_page_markdown(page) == f"intro\n{table}\nend"


def test_readme_is_a_front_page_whose_links_resolve():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "make demo" in readme and "make test" in readme and "error: ..." in readme
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if not link.startswith("http")]
    assert "docs/img/htba-smoke.png" in local
    for link in local:
        assert (REPO / link).exists() or link in GENERATED, link


def test_every_docs_page_is_in_the_nav():
    config = (REPO / "mkdocs.yml").read_text()
    pages = {str(p.relative_to(REPO / "docs")) for p in (REPO / "docs").rglob("*.md")} | {"cli.md"}
    in_nav = set(re.findall(r":\s+([\w/-]+\.md)\s*$", config, re.MULTILINE))
    assert pages == in_nav


def test_ci_installs_chromium_and_never_skips_the_browser_test():
    ci = (REPO / ".ci" / "run").read_text()
    assert "apt-get install" in ci and "chromium" in ci and "BENCH_REQUIRE_BROWSER=1" in ci
    assert ci.strip().endswith("make test")
    assert "mkdocs build --strict" in (REPO / "Makefile").read_text()


def test_the_site_builds_strictly_with_its_generated_pages(tmp_path):
    """`mkdocs build --strict` (a broken link or reference fails), the CLI reference and the leaderboard page
    generated into it, the leaderboard not shadowed by a Markdown page of the same URL."""
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    mkdocs = Path(sys.executable).parent / "mkdocs"
    proc = subprocess.run([str(mkdocs), "build", "--strict", "--quiet", "-d", str(site)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "<title>benchsuite leaderboard</title>" in (site / "leaderboard" / "index.html").read_text()
    assert 'id="bench-leaderboard"' in (site / "cli" / "index.html").read_text()
    api = (site / "api" / "index.html").read_text()
    assert "benchsuite_defenses" in api and "write_leaderboard" in api
    assert ":class:" not in api  # Sphinx roles of the docstrings are not left as text
    assert (site / "curves" / "cifar10-htba-small-cpu-50ep.png").is_file()
    assert "<code>cam_layer</code>" in (site / "methods" / "patchsearch" / "index.html").read_text()
    for page in site.rglob("*.html"):  # every options table was generated
        assert "options: benchsuite" not in page.read_text(), page


def test_the_presets_page_lists_every_preset():
    from benchsuite.settings.config import PRESETS

    rows = [line for line in (REPO / "docs" / "presets.md").read_text().splitlines() if line.startswith("| `")]
    listed = {name for row in rows for name in re.findall(r"`([\w-]+)`", row.split(" | ")[0])}
    assert set(PRESETS) <= listed, set(PRESETS) - listed
