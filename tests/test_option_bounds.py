"""Ranges declared beside options (``lr: Positive``) and checked where every option is read (issue #27)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import pytest

from benchsuite.api import config_from_options
from benchsuite.core.errors import BenchError
from benchsuite.core.typed import Bounds, Fraction, Positive, Sized, coerce
from benchsuite.settings.validate import check_call_options


@pytest.mark.parametrize("bounds, inside, outside, text", [
    (Bounds(0, low_open=True), [1e-9, 3.0], [0.0, -1.0], "> 0"),
    (Bounds(0, 1, low_open=True), [0.5, 1.0], [0.0, 1.5], "> 0 and <= 1"),
    (Bounds(1), [1, 7], [0, -3], ">= 1"),
    (Bounds(0, 1, high_open=True), [0.0, 0.99], [1.0, -0.1], ">= 0 and < 1"),
])
def test_bounds_admit_their_range_only(bounds, inside, outside, text):
    assert all(bounds.admits(v) for v in inside)
    assert not any(bounds.admits(v) for v in outside)
    assert bounds.describe() == text


@dataclass(frozen=True)
class PluginConfig:
    """How a plugin author declares ranges: the same aliases the built-ins use."""

    steps: Sized = 10
    lr: Positive = 0.1
    keep: Fraction = 0.5
    margin: Annotated[float, Bounds(-1, 1)] = 0.0
    note: str = ""


def test_a_plugin_config_is_checked_by_its_annotations():
    made = config_from_options(PluginConfig, {"steps": 3, "lr": 2, "keep": 1.0, "margin": -1}, "attack mine")
    assert (made.steps, made.lr, made.keep, made.margin) == (3, 2.0, 1.0, -1.0)
    assert isinstance(made.lr, float)
    for options, message in [({"steps": 0}, "attack mine.steps = 0 must be >= 1"),
                             ({"lr": -0.5}, "attack mine.lr = -0.5 must be > 0"),
                             ({"keep": 0}, "attack mine.keep = 0.0 must be > 0 and <= 1"),
                             ({"margin": 2.0}, "attack mine.margin = 2.0 must be >= -1 and <= 1"),
                             ({"steps": 2.0}, "attack mine.steps must be int, got 2.0"),
                             ({"steps": True}, "attack mine.steps must be int, got True")]:
        with pytest.raises(BenchError, match=message):
            config_from_options(PluginConfig, options, "attack mine")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_no_float_option_takes_a_non_finite_value(value):
    with pytest.raises(BenchError, match="must be a finite number"):
        coerce(float, value, "x")
    with pytest.raises(BenchError, match="must be a finite number"):
        coerce(Positive, value, "x")


def test_an_optional_sized_value_may_be_unset():
    assert coerce(Sized | None, None, "heads") is None
    with pytest.raises(BenchError, match="heads = 0 must be >= 1"):
        coerce(Sized | None, 0, "heads")


def factory_with_kwargs(image_size: int, width: Sized = 64, **timm_options) -> object:
    return None


def test_backbone_factory_options_are_checked_even_beside_kwargs():
    check_call_options(factory_with_kwargs, {"width": 8, "drop_rate": 0.1}, "backbone b", "ssl.backbone_options")
    with pytest.raises(BenchError, match="ssl.backbone_options.width = 0 must be >= 1"):
        check_call_options(factory_with_kwargs, {"width": 0}, "backbone b", "ssl.backbone_options")
