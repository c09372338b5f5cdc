"""DECREE (Feng et al., CVPR 2023): an encoder-level backdoor detector that needs no labels (spec 10.1).

``inspect`` inverts one trigger on a class-balanced draw of the defender's clean images: the smallest mask
that makes the encoder's embeddings of the triggered images collapse (mean pairwise cosine > tau). The score
is PL1, the share of the image that mask needs; a backdoored encoder collapses on its small trigger, a clean
one only when most of the image is covered. Trojaned when PL1 < ``threshold``. Nothing is repaired: the
encoder is evaluated as it is, and the inverted trigger is judged against the real one like SSL-Cleanse's.
"""

from __future__ import annotations

from benchsuite.api import Defense, ReversedTrigger, Verdict
from benchsuite.api.hookspecs import hookimpl
from benchsuite.decree.config import DecreeConfig
from benchsuite.decree.detector import detect
from benchsuite.eval.trigger_codec import decode_trigger


class Decree(Defense):
    name = "decree"
    kind = "detector"
    score_name = "pl1"
    Config = DecreeConfig
    description = "DECREE: label-free trigger inversion (collapse of the triggered embeddings) + PL1 threshold"

    def inspect(self, ctx) -> Verdict:
        return detect(ctx.encoder, ctx.images, ctx.labels, self.config, ctx.seed, ctx.device, ctx.workdir,
                      mean=ctx.mean, std=ctx.std)

    def reversed_trigger(self, verdict: Verdict) -> ReversedTrigger | None:
        if "trigger" not in verdict.extras:
            return None
        return ReversedTrigger(*decode_trigger(verdict.extras["trigger"]))


@hookimpl
def benchsuite_defenses() -> list[type[Defense]]:
    return [Decree]
