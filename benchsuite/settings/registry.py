"""The plugin registry: every entry point in group ``benchsuite`` loaded through pluggy.

Built-in plugins are declared as entry points in this project's pyproject, exactly like
third-party ones. A plugin that fails to import is recorded with its error and skipped; two
plugins that claim the same name for one kind of item are a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

import pluggy

from benchsuite.api import hookspecs
from benchsuite.core.errors import BenchError

# registry section -> hook name
SECTIONS = {
    "attack": "benchsuite_attacks",
    "defense": "benchsuite_defenses",
    "dataset": "benchsuite_datasets",
    "ssl": "benchsuite_ssl_methods",
    "backbone": "benchsuite_backbones",
    "threat_protocol": "benchsuite_threat_protocols",
    "defense_protocol": "benchsuite_defense_protocols",
}


@dataclass(frozen=True)
class Entry:
    """One registered item and the plugin that contributed it."""

    name: str
    obj: Any
    plugin: str
    description: str = ""


@dataclass
class Registry:
    items: dict[str, dict[str, Entry]] = field(default_factory=lambda: {s: {} for s in SECTIONS})
    failed: dict[str, str] = field(default_factory=dict)  # plugin name -> error

    def get(self, section: str, name: str) -> Any:
        """The item called ``name``; an unknown name is a one-line error listing the known ones."""
        entries = self.items[section]
        if name not in entries:
            known = ", ".join(sorted(entries)) or "none"
            hint = ""
            if self.failed:
                hint = f" (plugins that failed to load: {', '.join(sorted(self.failed))}; see `bench list`)"
            raise BenchError(f"unknown {section} {name!r}: known are {known}{hint}")
        return entries[name].obj

    def names(self, section: str) -> list[str]:
        return sorted(self.items[section])


def _describe(obj: Any) -> str:
    text = getattr(obj, "description", "") or (obj.__doc__ or "")
    return text.strip().splitlines()[0] if text.strip() else ""


def _item_names(section: str, contributed: Any) -> list[tuple[str, Any]]:
    if isinstance(contributed, dict):
        return list(contributed.items())
    return [(obj.name, obj) for obj in contributed or []]


def build_registry(plugins: list[tuple[str, ModuleType | Any]], failed: dict[str, str] | None = None) -> Registry:
    """Register plugin modules (name, module) with pluggy and collect what each contributes."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    registry = Registry(failed=dict(failed or {}))
    for name, module in plugins:
        try:
            pm.register(module, name=name)
        except (ValueError, pluggy.PluginValidationError) as err:
            registry.failed[name] = f"{type(err).__name__}: {err}"
    for section, hook_name in SECTIONS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            try:
                contributed = impl.function()
            except Exception as err:  # a broken plugin must not take the others down
                registry.failed[impl.plugin_name] = f"{hook_name}: {type(err).__name__}: {err}"
                continue
            for item_name, obj in _item_names(section, contributed):
                existing = registry.items[section].get(item_name)
                if existing is not None:
                    raise BenchError(
                        f"two plugins claim the {section} name {item_name!r}: {existing.plugin!r} and "
                        f"{impl.plugin_name!r}; uninstall or rename one of them"
                    )
                registry.items[section][item_name] = Entry(item_name, obj, impl.plugin_name, _describe(obj))
    return registry


def discover_plugins(group: str = "benchsuite") -> tuple[list[tuple[str, ModuleType]], dict[str, str]]:
    """Import every entry point in ``group``; return the loaded modules and the failures."""
    loaded, failed = [], {}
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            loaded.append((ep.name, ep.load()))
        except Exception as err:  # ImportError, SyntaxError, anything a plugin may raise on import
            failed[ep.name] = f"{type(err).__name__}: {err}"
    return loaded, failed


@cache
def get_registry() -> Registry:
    """The process-wide registry built from the installed entry points."""
    if not entry_points(group="benchsuite"):
        raise BenchError("no benchsuite plugins are installed: install the package with `pip install -e .`")
    return build_registry(*discover_plugins())
