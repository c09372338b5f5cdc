"""The built-in protocols, registered like a third-party plugin's."""

from __future__ import annotations

from benchsuite.api import hookimpl
from benchsuite.protocols.base import DefenseProtocol, ThreatProtocol
from benchsuite.protocols.data_poisoning import DataPoisoning
from benchsuite.protocols.detector import DetectorProtocol
from benchsuite.protocols.filter import FilterProtocol
from benchsuite.protocols.model_poisoning import ModelPoisoning
from benchsuite.protocols.none import NoDefenseProtocol
from benchsuite.protocols.repairer import RepairerProtocol
from benchsuite.protocols.training import TrainingProtocol


@hookimpl
def benchsuite_threat_protocols() -> list[type[ThreatProtocol]]:
    return [DataPoisoning, ModelPoisoning]


@hookimpl
def benchsuite_defense_protocols() -> list[type[DefenseProtocol]]:
    return [NoDefenseProtocol, FilterProtocol, TrainingProtocol, DetectorProtocol, RepairerProtocol]
