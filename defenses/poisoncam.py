"""PoisonCAM: cluster activation masking locates the candidate trigger; then PatchSearch's flip
test, iterative search and poison classifier (spec section 5; no public code exists).

Defaults are scaled for the small (32 px, 10-class) data the suite runs on; the paper's value is in
the comment next to each. Where the paper leaves a gap, the choice is noted (spec 5.1-5.3).
"""

from __future__ import annotations

from dataclasses import dataclass

from benchsuite.api import Defense, Detection
from benchsuite.api.hookspecs import hookimpl
from benchsuite.core.typed import Sized
from benchsuite.poison_search import MaskingLocator, filter_config, run_filter
from benchsuite.poison_search.defaults import FilterDefenseConfig


@dataclass(frozen=True)
class PoisonCAMConfig(FilterDefenseConfig):
    num_masks: Sized = 64  # paper B = 256 (at 224 px)
    cluster_score: str = "sum"  # paper app. A: sum of the cluster's scores (PatchSearch code: max)
    flip_score: str = "into"  # paper text says "changed" ("any"); default keeps PatchSearch's definition

class PoisonCAM(Defense):
    name = "poisoncam"
    kind = "filter"
    Config = PoisonCAMConfig
    description = "PoisonCAM: cluster activation masking + flip-test search + poison classifier"

    def detect(self, ctx) -> Detection:
        cfg = filter_config(self.config, ctx.num_classes, len(ctx.images))
        return run_filter(ctx, MaskingLocator(self.config.num_masks, ctx.seed), cfg)


@hookimpl
def benchsuite_defenses() -> list[type[Defense]]:
    return [PoisonCAM]
