"""The documentation (issue #26): a front-page README, every page in the site, a CLI reference from the parser."""

from __future__ import annotations

import re
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
