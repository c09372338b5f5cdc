"""The "w/o Defense" column: the encoder trained on the poisoned set, evaluated as it is."""

from __future__ import annotations

from dataclasses import dataclass

from benchsuite.api import Defense
from benchsuite.api.hookspecs import hookimpl


@dataclass(frozen=True)
class NoDefenseConfig:
    pass


class NoDefense(Defense):
    name = "none"
    kind = "none"
    Config = NoDefenseConfig
    description = "no defense: evaluate the poisoned encoder (the w/o Defense column)"


@hookimpl
def benchsuite_defenses() -> list[type[Defense]]:
    return [NoDefense]
