"""The hooks through which plugins contribute to the suite (entry-point group ``benchsuite``).

A plugin is a plain module with ``@hookimpl`` functions; each hook returns the items the plugin
adds. Built-in plugins are registered through the same entry points as third-party ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from benchsuite.api.attacks import Attack
    from benchsuite.api.defenses import Defense
    from benchsuite.api.ssl import SSLMethod

PROJECT = "benchsuite"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def benchsuite_attacks() -> list[type[Attack]]:
    """Attack classes (subclasses of :class:`benchsuite.api.DataAttack` or :class:`benchsuite.api.ModelAttack`)."""


@hookspec
def benchsuite_defenses() -> list[type[Defense]]:
    """Defense classes (subclasses of :class:`benchsuite.api.Defense`)."""


@hookspec
def benchsuite_datasets() -> dict[str, Callable]:
    """Dataset loaders by name: ``loader(options: dict) -> benchsuite.data.Splits``."""


@hookspec
def benchsuite_ssl_methods() -> list[type[SSLMethod]]:
    """SSL method classes (implementing :class:`benchsuite.api.SSLMethod`; most subclass
    :class:`benchsuite.ssl.base.SSLMethod`)."""


@hookspec
def benchsuite_backbones() -> dict[str, Callable]:
    """Backbone factories by name: ``factory(image_size: int, **options) -> nn.Module``
    returning an encoder with a ``num_features`` attribute and pooled features from ``forward``."""


@hookspec
def benchsuite_threat_protocols() -> list[type]:
    """Threat protocol classes, one per ``Attack.threat`` kind (subclasses of
    :class:`benchsuite.protocols.base.ThreatProtocol`): how the encoder under threat comes about."""


@hookspec
def benchsuite_defense_protocols() -> list[type]:
    """Defense protocol classes, one per ``Defense.kind`` (subclasses of
    :class:`benchsuite.protocols.base.DefenseProtocol`). A plugin that adds a kind adds its protocol here."""
