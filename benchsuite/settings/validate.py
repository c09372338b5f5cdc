"""Checks of a whole run configuration against the registered plugins and the data, before any stage runs."""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Callable, Iterable
from typing import Any

from benchsuite.api import Attack, config_from_options
from benchsuite.core.errors import BenchError
from benchsuite.core.typed import coerce
from benchsuite.data import Splits
from benchsuite.settings.config import RunConfig
from benchsuite.settings.registry import Registry


def check_call_options(fn: Callable[..., Any], options: dict[str, Any], owner: str, where: str) -> None:
    """Refuse options that ``fn`` does not take (a typo would be ignored), of the wrong type, or outside the
    range its annotation declares (``width: Sized``).

    Keyword parameters are checked even when ``fn`` also takes ``**kwargs``; the rest of the options are then
    ``fn``'s to judge.
    """
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    known = [n for n, p in params.items() if p.kind in named]
    if not any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise BenchError(f"unknown option(s) {', '.join(unknown)} for {owner}: known are {', '.join(known)}")
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except (NameError, TypeError, AttributeError):
        hints = {}
    for key, value in options.items():
        if key in known:
            coerce(hints.get(key, Any), value, f"{where}.{key}")


def check_loader_options(loader: Callable[..., Any], options: dict[str, Any], name: str) -> None:
    """Refuse dataset options the loader does not take or of the wrong type (``**kwargs``: not checked)."""
    check_call_options(loader, options, f"dataset {name}", "dataset.options")


def check_config(config: RunConfig, registry: Registry) -> None:
    """Every option of the dataset, the SSL method and every attack and defense section, whether the grid
    uses it or not (a typo in an unused section would otherwise wait for the run that uses it)."""
    loader = registry.get("dataset", config.dataset.name)
    check_loader_options(loader, config.dataset.options, config.dataset.name)
    method = registry.get("ssl", config.ssl.method)
    backbone = config.ssl.backbone
    if backbone in registry.items["backbone"]:
        check_call_options(registry.get("backbone", backbone), config.ssl.backbone_options, f"backbone {backbone}",
                           "ssl.backbone_options")
    else:
        import timm

        if not timm.is_model(backbone):
            known = ", ".join(sorted(registry.items["backbone"]))
            raise BenchError(f"unknown backbone {backbone!r}: use one of {known} or a timm model name "
                             "(timm.list_models())")
    config_from_options(method.Config, config.ssl.method_options, f"ssl method {config.ssl.method}")
    for section, options in (("attack", config.attack), ("defense", config.defense)):
        known = registry.items[section]
        for name, values in options.items():
            if name not in known:
                raise BenchError(f"{section}.{name}: no {section} named {name} is registered (known are "
                                 f"{', '.join(sorted(known))}): fix or remove the [{section}.{name}] section")
            if not isinstance(values, dict):
                raise BenchError(f"{section}.{name} must be a table of options, got {values!r}: "
                                 f"write [{section}.{name}] key = value")
            config_from_options(known[name].obj.Config, values, f"{section} {name}")


def check_poison_counts(splits: Splits, cells: Iterable[tuple[Attack, tuple[int, ...], float]]) -> None:
    """Refuse a cell that poisons no image (a rate that rounds to 0, a target absent from the training split):
    its ASR would measure nothing."""
    labels = splits.train.labels
    for attack, targets, rate in cells:
        for target in targets:
            n = int((labels == target).sum())
            if n == 0:
                raise BenchError(f"target class {target} has no training images: nothing to poison; pick a class "
                                 "of the training split with --targets")
            if attack.poison_count(labels, target, rate) < 1:
                least = math.ceil(1000 / n) / 1000
                raise BenchError(f"rate {rate:g} poisons 0 of the {n} training images of class {target}: "
                                 f"raise --rates to at least {least:g}")
