"""The repair stage: an encoder-level defense's repaired copy of an encoder (cache stage ``mitigate``)."""

from __future__ import annotations

from benchsuite.api import Defense, Verdict
from benchsuite.core.cache import code_versions, stable_hash
from benchsuite.core.checkpoint import load_into, save_tensors
from benchsuite.core.errors import BenchError
from benchsuite.stages.base import Encoder, StageBase

STAGE = "mitigate"  # the cache folder's name since SSL-Cleanse's mitigation, kept so its repairs stay cached


class RepairStage(StageBase):
    """Key: the defense (name, config, code version), the encoder it repairs, the defender's data, the seed."""

    REPAIR_VERSION = 0

    def repair_key(self, defense: Defense, encoder_key: str, seed: int) -> str:
        return stable_hash("mitigate", defense.name, defense.config, encoder_key, self.dataset_key, seed,
                           *code_versions(stage=self.REPAIR_VERSION, defense=defense.version))

    def repair(self, defense: Defense, encoder: Encoder, verdict: Verdict | None, seed: int) -> Encoder:
        """The defense's repaired encoder (cached), or ``encoder`` itself when it repairs nothing."""
        key = self.repair_key(defense, encoder.key, seed)
        workdir = self.cache.dir(STAGE, key)
        weights = workdir / "encoder.safetensors"

        def load() -> Encoder:
            if not weights.is_file():
                if self.cache.meta(STAGE, key).get("repaired"):
                    raise BenchError(f"the repaired encoder {weights} is missing")
                return encoder  # the defense repaired nothing
            backbone = self.build_method().backbone
            load_into(backbone, weights)
            return Encoder(key, backbone)

        def compute() -> Encoder:
            repaired = defense.repair(self.defender_context(encoder, seed, workdir), verdict)
            if repaired is not None:
                save_tensors(weights, repaired.state_dict())
            self.cache.mark_done(STAGE, key, {"defense": defense.name, "repaired": repaired is not None})
            return load()

        return self.cache.run(STAGE, key, load, compute)
