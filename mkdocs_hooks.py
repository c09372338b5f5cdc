"""mkdocs hooks: pages generated from the code at build time, so they cannot go stale.

``docs/cli.md`` is written from ``benchsuite.cli.parser()``, ``docs/leaderboard/index.html`` from
``leaderboards/*.csv``. Both are git-ignored: the build is their only source.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _option_row(action: argparse.Action) -> str:
    names = ", ".join(f"`{n}`" for n in action.option_strings) or f"`{action.dest}`"
    if action.metavar and action.option_strings:
        names += f" `{action.metavar}`"
    about = _cell(action.help or "")
    if action.choices and not isinstance(action.choices, dict):
        about += " (one of " + ", ".join(f"`{c}`" for c in action.choices) + ")"
    if action.default not in (None, False, [], argparse.SUPPRESS) and action.option_strings:
        about += f" (default: `{action.default}`)"
    return f"| {names} | {about} |"


def cli_markdown(parser: argparse.ArgumentParser) -> str:
    """The CLI reference: one section per subcommand with its usage and an options table."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    lines = ["# CLI reference", "",
             "Generated from `benchsuite.cli.parser()` when the site is built; `bench COMMAND --help` prints "
             "the same.", ""]
    for name, command in sub.choices.items():
        lines += [f"## bench {name}", "", _cell(helps.get(name) or ""), "", "```text",
                  command.format_usage().strip(), "```", ""]
        actions = [a for a in command._actions if not isinstance(a, argparse._HelpAction)]
        if actions:
            lines += ["| argument | meaning |", "|---|---|", *(_option_row(a) for a in actions), ""]
    return "\n".join(lines)


def _write_if_changed(path: Path, text: str) -> None:
    # `mkdocs serve` rebuilds when a file under docs/ changes: rewriting an unchanged page would loop
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def on_pre_build(config) -> None:
    from benchsuite.cli import parser
    from benchsuite.reporting.leaderboard import page_html, read_leaderboards

    docs = Path(config["docs_dir"])
    _write_if_changed(docs / "cli.md", cli_markdown(parser()))
    _write_if_changed(docs / "leaderboard" / "index.html", page_html(read_leaderboards(ROOT / "leaderboards")))


def _field_comment(cls: type, name: str) -> str:
    """The comments beside and directly above a dataclass field, from the nearest class that declares it."""
    for klass in cls.__mro__:
        if name not in klass.__dict__.get("__annotations__", {}):
            continue
        lines = inspect.getsource(klass).splitlines()
        for i, line in enumerate(lines):
            if re.match(rf"\s+{name}\s*:", line):
                above = []
                for previous in reversed(lines[:i]):
                    text = previous.strip()
                    if not text.startswith("#") or text.startswith("# --"):  # "# -- section --" dividers
                        break
                    above.insert(0, text.lstrip("# "))
                beside = line.split("  # ", 1)[1] if "  # " in line else ""
                return " ".join([*above, beside]).strip()
    return ""


def _value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_value(v) for v in value) + ")"
    return repr(value)


def options_markdown(cls: type) -> str:
    """A method's options table: each field of its config dataclass, its default and the source's comment
    (where the paper's or the official code's value is named)."""
    rows = ["| option | default | paper / code, and notes |", "|---|---|---|"]
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = "(required)"
        rows.append(f"| `{field.name}` | `{_value(default)}` | {_cell(_field_comment(cls, field.name))} |")
    return "\n".join(rows)


# a page asks for a generated options table with <!-- options: module:ConfigClass -->
_OPTIONS = re.compile(r"^<!-- options: (?P<module>[\w.]+):(?P<name>\w+) -->$", re.MULTILINE)


def on_page_markdown(markdown: str, **_) -> str:
    def table(match: re.Match) -> str:
        return options_markdown(getattr(importlib.import_module(match["module"]), match["name"]))

    return _OPTIONS.sub(table, markdown)


# docstrings name objects in Sphinx roles (:class:`x`), which mkdocstrings leaves as text before the code
_SPHINX_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|obj):(?=<code>)")


def on_page_content(html: str, **_) -> str:
    return _SPHINX_ROLE.sub("", html)


def front_page_picture(path: Path) -> Path:
    """The README's picture: the smoke preset's HTBA trigger beside its patched validation images, drawn by
    the report's own code from the embedded synthetic data (``python mkdocs_hooks.py`` rewrites it)."""
    import tempfile

    from PIL import Image

    from benchsuite.attacks.htba import HTBA, HTBAConfig
    from benchsuite.data.synthetic import make_synthetic
    from benchsuite.reporting.attack_pictures import save_attack_pictures

    splits = make_synthetic(num_train_per_class=50, num_val_per_class=10, image_size=32, seed=0)
    attack = HTBA(HTBAConfig(trigger_size=16.0, train_location=(0.2, 0.8)))  # the smoke preset's
    poisoning = attack.poison(splits.train, [0], 1.0, 0)
    with tempfile.TemporaryDirectory() as tmp:
        save_attack_pictures(Path(tmp), attack, poisoning, splits, {0: attack.patch_val(splits.val, 0, 0)},
                             title="htba, smoke preset")
        trigger, patched = (Image.open(Path(tmp) / name).convert("RGB")
                            for name in ("attack_triggers.png", "attack_patched_t0.png"))
        picture = Image.new("RGB", (trigger.width + patched.width, max(trigger.height, patched.height)), "white")
        picture.paste(trigger, (0, (picture.height - trigger.height) // 2))
        picture.paste(patched, (trigger.width, (picture.height - patched.height) // 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, optimize=True)
    return path


if __name__ == "__main__":
    print(front_page_picture(ROOT / "docs" / "img" / "htba-smoke.png"))
