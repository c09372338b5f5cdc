"""Building a plugin's config dataclass from the options a user wrote."""

from __future__ import annotations

from typing import Any

from benchsuite.core.errors import BenchError
from benchsuite.core.typed import coerce, field_types


def config_from_options(config_cls: type, options: dict[str, Any], owner: str) -> Any:
    """Build a config dataclass from ``options``, refusing unknown keys with the known ones and values of the
    wrong type (``trigger_size = "abc"``) by name."""
    known = field_types(config_cls)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise BenchError(
            f"unknown option(s) {', '.join(unknown)} for {owner}: known are {', '.join(known)}"
        )
    return config_cls(**{k: coerce(known[k], v, f"{owner}.{k}") for k, v in options.items()})
