"""The cached stages of a grid cell, one module per stage; :class:`Stages` holds them all for one run.

Each stage computes its key from its declared inputs (upstream keys, the config sections it reads, the
files it names by content) and code versions (the stage's ``*_VERSION`` and the ``version`` of the
attack, defense or SSL method that does the work), so bumping a number recomputes exactly that stage
and what depends on it.
"""

from benchsuite.stages.backdoor import Backdoored, BackdoorStage
from benchsuite.stages.base import Cell, Encoder, file_digest, resolve_device
from benchsuite.stages.dataset import DatasetStage
from benchsuite.stages.detect import DetectStage
from benchsuite.stages.features import FeaturesStage
from benchsuite.stages.inspect import InspectStage
from benchsuite.stages.patched import PatchedStage
from benchsuite.stages.poison import PoisonStage
from benchsuite.stages.pretrain import PretrainStage
from benchsuite.stages.probe import ProbeStage
from benchsuite.stages.repair import RepairStage


class Stages(DatasetStage, PoisonStage, PatchedStage, PretrainStage, BackdoorStage, FeaturesStage, ProbeStage,
             DetectStage, InspectStage, RepairStage):
    """Every stage of one ``bench run``: the config, the plugin registry, the stage cache and the device."""


__all__ = ["Backdoored", "Cell", "Encoder", "Stages", "file_digest", "resolve_device"]
