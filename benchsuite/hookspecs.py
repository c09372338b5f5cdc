"""The hooks through which plugins contribute to the suite (entry-point group ``benchsuite``).

A plugin is a plain module with ``@hookimpl`` functions; each hook returns the items the plugin
adds. Built-in plugins are registered through the same entry points as third-party ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from benchsuite.api import Attack, Defense
    from benchsuite.ssl.base import SSLMethod

PROJECT = "benchsuite"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def benchsuite_attacks() -> list[type[Attack]]:
    """Attack classes (subclasses of :class:`benchsuite.api.Attack`)."""


@hookspec
def benchsuite_defenses() -> list[type[Defense]]:
    """Defense classes (subclasses of :class:`benchsuite.api.Defense`)."""


@hookspec
def benchsuite_datasets() -> dict[str, Callable]:
    """Dataset loaders by name: ``loader(options: dict) -> benchsuite.data.Splits``."""


@hookspec
def benchsuite_ssl_methods() -> list[type[SSLMethod]]:
    """SSL method classes (subclasses of :class:`benchsuite.ssl.base.SSLMethod`)."""


@hookspec
def benchsuite_backbones() -> dict[str, Callable]:
    """Backbone factories by name: ``factory(image_size: int, **options) -> nn.Module``
    returning an encoder with a ``num_features`` attribute and pooled features from ``forward``."""
