"""The contracts a plugin implements and the types it hands back; imports no implementation."""

from benchsuite.api.attacks import Attack, Backdoor, DataAttack, ModelAttack, NamedFigure, PatchedSet, Poisoning
from benchsuite.api.context import AttackContext, DefenseContext
from benchsuite.api.data import ImageDataset, Splits
from benchsuite.api.defenses import ComposedDefense, Defense, Detection, ReversedTrigger, Verdict
from benchsuite.api.hookspecs import hookimpl
from benchsuite.api.options import config_from_options
from benchsuite.api.ssl import SSLMethod

__all__ = [
    "Attack", "AttackContext", "Backdoor", "ComposedDefense", "DataAttack", "Defense", "DefenseContext",
    "Detection", "ImageDataset", "ModelAttack", "NamedFigure", "PatchedSet", "Poisoning", "ReversedTrigger",
    "SSLMethod", "Splits", "Verdict", "config_from_options", "hookimpl",
]
