"""A plugin that raises during a run: one line naming the plugin and its package, not a traceback.

The stage cache keeps every stage that finished before the failure, so after the plugin is fixed (or left
out of the grid) the same command resumes. ``BENCH_TRACEBACK=1`` lets the original exception through.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import packages_distributions
from types import TracebackType

from benchsuite.core.errors import BenchError
from benchsuite.settings.registry import Registry

SHOW_TRACEBACK = "BENCH_TRACEBACK"


@dataclass(frozen=True)
class Culprit:
    """The plugin whose code raised, and the deepest line of it in the traceback."""

    plugin: str
    package: str
    location: str


def _item_module(obj: object) -> str | None:
    return getattr(obj, "__module__", None) or getattr(type(obj), "__module__", None)


def plugin_modules(registry: Registry) -> dict[str, str]:
    """Module name -> plugin name, for the module of every item a plugin registered."""
    modules: dict[str, str] = {}
    for entries in registry.items.values():
        for entry in entries.values():
            module = _item_module(entry.obj)
            if module:
                modules.setdefault(module, entry.plugin)
    return modules


def _owner(module: str, modules: dict[str, str]) -> str | None:
    if module in modules:
        return modules[module]
    # a third-party plugin's helper modules belong to it; the suite's own packages do not
    top = module.split(".")[0]
    if top == "benchsuite":
        return None
    return next((plugin for name, plugin in modules.items() if name.split(".")[0] == top), None)


def _frames(tb: TracebackType | None) -> Iterator[TracebackType]:
    while tb is not None:
        yield tb
        tb = tb.tb_next


def culprit(err: BaseException, registry: Registry) -> Culprit | None:
    """The plugin of the deepest traceback frame that lies in a plugin's code, or None (the suite's own)."""
    modules = plugin_modules(registry)
    for tb in reversed(list(_frames(err.__traceback__))):
        module = tb.tb_frame.f_globals.get("__name__", "")
        plugin = _owner(module, modules)
        if plugin is not None:
            top = module.split(".")[0]
            package = ", ".join(packages_distributions().get(top, [])) or top
            code = tb.tb_frame.f_code
            return Culprit(plugin, package, f"{os.path.basename(code.co_filename)}:{tb.tb_lineno} in {code.co_name}")
    return None


@contextmanager
def naming_plugins(registry: Registry, where: str) -> Iterator[None]:
    """Turn an exception raised in a plugin's code during ``where`` into a one-line :class:`BenchError`."""
    try:
        yield
    except (BenchError, KeyboardInterrupt, OSError):
        raise  # already one line, or the CLI's to word (a full disk, a read-only folder)
    except Exception as err:
        found = None if os.environ.get(SHOW_TRACEBACK) else culprit(err, registry)
        if found is None:
            raise
        detail = " ".join(str(err).split()) or "(no message)"
        raise BenchError(
            f"plugin {found.plugin!r} (package {found.package}) raised {type(err).__name__}: {detail} during "
            f"{where}, at {found.location}: fix the plugin or leave it out of the grid, then rerun the same "
            f"command (finished stages are kept; {SHOW_TRACEBACK}=1 shows the traceback)") from err
