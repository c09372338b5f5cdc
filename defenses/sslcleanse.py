"""SSL-Cleanse (Zheng et al., ECCV'24): an encoder-level backdoor detector and mitigator (spec section 7).

``inspect`` clusters a small unlabelled sample of the defender's clean images (K by SWK), reverses one
trigger per cluster and flags the encoder when the smallest trigger is a MAD outlier; ``mitigate``
distils the encoder into a copy that ignores the reversed trigger. Only encoders judged trojaned are
mitigated by default (the slides' pipeline repairs the flagged encoders; a benign verdict has no
trigger worth removing and fine-tuning would only cost accuracy): ``mitigate_when = "always"`` repairs
every encoder with its smallest-norm trigger, ``"never"`` evaluates the detector alone.
"""

from __future__ import annotations

from torch import nn

from benchsuite.api import Defense, ReversedTrigger, Verdict
from benchsuite.api.hookspecs import hookimpl
from benchsuite.core.errors import BenchError
from benchsuite.eval.trigger_codec import decode_trigger
from benchsuite.sslcleanse.config import SSLCleanseConfig, detection_options, validate
from benchsuite.sslcleanse.detector import detect, sample_indices
from benchsuite.sslcleanse.mitigator import mitigate_encoder


class SSLCleanse(Defense):
    name = "sslcleanse"
    kind = "detector"  # that also repairs: its protocol evaluates the repaired encoder
    score_name = "anomaly_index"
    Config = SSLCleanseConfig
    version = 1  # 1: the MAD test on the converged clusters only, abstaining below three (issue #24)
    description = "SSL-Cleanse: SWK clustering + per-cluster trigger inversion + MAD test; distillation mitigator"

    def inspect(self, ctx) -> Verdict:
        return detect(ctx.encoder, ctx.images, ctx.features, self.config, ctx.seed, ctx.device, ctx.workdir,
                      mean=ctx.mean, std=ctx.std)

    def inspect_options(self) -> dict:
        return detection_options(self.config)

    def reversed_trigger(self, verdict: Verdict) -> ReversedTrigger | None:
        if "trigger" not in verdict.extras:
            return None
        return ReversedTrigger(*decode_trigger(verdict.extras["trigger"]))

    def repair(self, ctx, verdict: Verdict | None) -> nn.Module | None:
        cfg = self.config
        validate(cfg)
        if cfg.mitigate_when == "never" or (cfg.mitigate_when == "trojaned" and not (verdict and verdict.trojaned)):
            return None
        trigger = self.reversed_trigger(verdict) if verdict is not None else None
        if trigger is None:
            raise BenchError("sslcleanse: the verdict carries no reversed trigger: rerun the detection")
        mask, pattern = trigger.mask, trigger.pattern
        if mask.shape != ctx.images.shape[1:3]:
            raise BenchError(f"sslcleanse: reversed trigger of {mask.shape} for images of {ctx.images.shape[1:3]}: "
                             "rerun the detection on these images")
        images = ctx.images[sample_indices(len(ctx.images), cfg.mitigate_ratio, ctx.seed, stream=1)]
        return mitigate_encoder(ctx.encoder, images, mask, pattern, cfg, ctx.seed, ctx.device, mean=ctx.mean,
                                std=ctx.std)


@hookimpl
def benchsuite_defenses() -> list[type[Defense]]:
    return [SSLCleanse]
