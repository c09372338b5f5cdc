"""TOML values checked against a dataclass's annotations: the one place option types are enforced."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any

from benchsuite.core.errors import BenchError

_SCALARS = (int, float, str, bool)


@dataclass(frozen=True)
class Bounds:
    """The range of a numeric option, declared beside it: ``lr: Annotated[float, POSITIVE]``.

    ``coerce`` refuses a value outside it by name; ``low_open`` / ``high_open`` exclude the end itself.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        low = None if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        high = None if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        return " and ".join(p for p in (low, high) if p) or "any number"


def at_least(low: float) -> Bounds:
    """``>= low`` (sizes and counts: ``at_least(1)``)."""
    return Bounds(low)


POSITIVE = Bounds(0, low_open=True)  # learning rates, temperatures
NON_NEGATIVE = Bounds(0)  # weight decays, margins, loss weights
FRACTION = Bounds(0, 1, low_open=True)  # a share of a split: (0, 1]
UNIT = Bounds(0, 1)  # a probability or momentum: [0, 1]

Sized = Annotated[int, at_least(1)]  # a width, batch size, count or period
Count = Annotated[int, NON_NEGATIVE]  # epochs, warm-up epochs: 0 allowed
Positive = Annotated[float, POSITIVE]
NonNegative = Annotated[float, NON_NEGATIVE]
Unit = Annotated[float, UNIT]
Fraction = Annotated[float, FRACTION]


def type_name(tp: Any) -> str:
    """``int``, ``float or str``, ``list of 2 float``: how a message names an annotation."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args if a is not type(None)) + (
            " (or unset)" if type(None) in args else "")
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {type_name(args[0])}"
        return f"list of {len(args)} {' '.join(dict.fromkeys(type_name(a) for a in args))}" if args else "list"
    if dataclasses.is_dataclass(tp):
        return "table"
    return getattr(tp, "__name__", str(tp))


def coerce(tp: Any, value: Any, where: str) -> Any:
    """``value`` as annotation ``tp`` wants it (lists become tuples, ints floats); a one-line error if it cannot."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if origin is Annotated:
        value = coerce(args[0], value, where)
        for bounds in (m for m in tp.__metadata__ if isinstance(m, Bounds)):
            if value is not None and not bounds.admits(value):
                raise BenchError(f"{where} = {value!r} must be {bounds.describe()}: fix the value")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # ``Sized | None``: the option's own message (its range) says more
            return coerce(options[0], value, where)
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(option, value, where)
            except BenchError:
                continue
        raise BenchError(f"{where} must be {type_name(tp)}, got {value!r}: fix the value")
    if origin is typing.Literal:
        if value not in args:
            raise BenchError(f"{where} must be {type_name(tp)}, got {value!r}: fix the value")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise BenchError(f"{where} must be a table, got {value!r}: write it as {{ key = value }}")
        return from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise BenchError(f"{where} must be a {type_name(tp)}, got {value!r}: write it as [a, b]")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(args[0], v, where) for v in value)
        if args and len(args) != len(value):
            raise BenchError(f"{where} must be a {type_name(tp)}, got {len(value)} value(s) {value!r}: fix the list")
        return tuple(coerce(a, v, where) for a, v in zip(args, value)) if args else tuple(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise BenchError(f"{where} must be a table, got {value!r}: write it as {{ key = value }}")
        return value
    if tp in _SCALARS:
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        # bool is an int in Python: `train.epochs = true` must not pass as 1
        if not isinstance(value, tp) or (tp is not bool and isinstance(value, bool)):
            raise BenchError(f"{where} must be {tp.__name__}, got {value!r}: fix the value")
        if tp is float and not math.isfinite(value):
            raise BenchError(f"{where} = {value!r} must be a finite number: fix the value")
    return value


def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of dataclass ``cls``; a field whose annotation cannot be resolved (a plugin's
    forward reference) is taken as it is."""
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except (NameError, TypeError, AttributeError):
        hints = {}
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from a dict, refusing unknown keys by name and values of the wrong type."""
    types_ = field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise BenchError(f"unknown key(s) {', '.join(unknown)} in [{where}]: known are {', '.join(sorted(types_))}")
    return cls(**{k: coerce(types_[k], v, f"{where}.{k}") for k, v in data.items()})
