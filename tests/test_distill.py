"""Distillation repair: a student distilled on clean images keeps the clean features and loses a planted
white-square backdoor; a copy of the suspect distilled the same way keeps it (the control); the loss parts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchsuite.core.errors import BenchError
from benchsuite.defenses.distill import clean_subset
from benchsuite.distill.config import DistillConfig
from benchsuite.distill.losses import AnchorBank, cosine_distance, similarity_kl
from benchsuite.distill.train import distil, lr_at
from benchsuite.ssl.augment import AugmentConfig, normalize, to_float
from tests.fixtures_planted import colour_data, single_thread, white_square, white_square_encoder

TARGET, SIDE = 0, 6


class SmallCNN(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Linear(32, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean((2, 3)))


def _embed(encoder: nn.Module, images: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return F.normalize(encoder(normalize(to_float(torch.from_numpy(images)), AugmentConfig())), dim=-1)


def _scores(encoder: nn.Module, train, val) -> tuple[float, float]:
    """Clean nearest-centroid accuracy and the share of triggered non-target images sent to the target (%)."""
    feats = _embed(encoder, train.images)
    centres = F.normalize(torch.stack([feats[torch.from_numpy(train.labels == c)].mean(0)
                                       for c in range(train.num_classes)]), dim=-1)
    clean = (_embed(encoder, val.images) @ centres.T).argmax(1).numpy()
    others = val.images[val.labels != TARGET].copy()
    others[:, -SIDE - 1:-1, -SIDE - 1:-1] = white_square(SIDE)
    triggered = (_embed(encoder, others) @ centres.T).argmax(1).numpy()
    return 100 * float((clean == val.labels).mean()), 100 * float((triggered == TARGET).mean())


LOSSES = {"cosine": DistillConfig(loss="cosine", epochs=40, batch_size=50, lr=0.1, lr_drops=(0.75,),
                                  crop_scale=(0.5, 1.0)),
          "compress": DistillConfig(loss="compress", epochs=40, batch_size=50, lr=0.1, lr_drops=(0.75,),
                                    crop_scale=(0.5, 1.0), queue_size=200, temperature=0.1, key_momentum=0.9)}


@pytest.fixture(scope="module")
def data():
    train, val = colour_data(20, seed=0), colour_data(6, seed=1)
    return train, val, white_square_encoder(train, SIDE, TARGET)


def _distil(teacher, student, images, cfg):
    with single_thread():
        torch.manual_seed(0)
        return distil(teacher, student, images, cfg, 0, torch.device("cpu"), AugmentConfig().mean,
                      AugmentConfig().std)


@pytest.mark.parametrize("loss", list(LOSSES))
def test_the_student_keeps_the_clean_features_and_loses_the_backdoor(data, loss):
    train, val, teacher = data
    student, log = _distil(teacher, SmallCNN(train.num_classes), train.images, LOSSES[loss])
    teacher_acc, teacher_asr = _scores(teacher, train, val)
    student_acc, student_asr = _scores(student, train, val)
    assert teacher_asr > 90  # the lever: the measurement sees the planted backdoor
    assert student_asr < 20 and student_acc >= teacher_acc - 15
    assert log[-1]["loss"] < log[0]["loss"]
    assert ("cos_to_teacher" in log[-1]) == (loss == "cosine")


def test_a_copy_of_the_suspect_distilled_on_the_same_clean_images_keeps_the_backdoor(data):
    train, val, teacher = data
    copy_of_suspect, _ = _distil(teacher, white_square_encoder(train, SIDE, TARGET), train.images,
                                 DistillConfig(loss="cosine", epochs=2, batch_size=50))
    assert _scores(copy_of_suspect, train, val)[1] > 90  # what the fresh initialisation is for


def test_similarity_kl_is_zero_for_a_student_that_matches_the_teacher_and_positive_otherwise():
    gen = torch.Generator().manual_seed(0)
    teacher = F.normalize(torch.randn(8, 16, generator=gen), dim=-1)
    banks = [AnchorBank(32, 16, torch.Generator().manual_seed(1), torch.device("cpu")) for _ in range(2)]
    for bank in banks:
        bank.push(F.normalize(torch.randn(32, 16, generator=torch.Generator().manual_seed(2)), dim=-1))
    assert similarity_kl(teacher, teacher, *banks, 0.04).item() == pytest.approx(0.0, abs=1e-6)
    other = F.normalize(torch.randn(8, 16, generator=gen), dim=-1)
    assert similarity_kl(teacher, other, *banks, 0.04).item() > 0.1
    assert cosine_distance(teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)


def test_the_anchor_bank_overwrites_its_oldest_rows_first():
    bank = AnchorBank(5, 2, torch.Generator().manual_seed(0), torch.device("cpu"))
    bank.push(torch.full((3, 2), 1.0))
    bank.push(torch.full((3, 2), 2.0))  # two rows at the end, the third wraps to row 0
    assert bank.memory[:, 0].tolist() == [2.0, 1.0, 1.0, 2.0, 2.0] and bank.position == 1


def test_the_step_schedule_and_the_clean_subset():
    cfg = DistillConfig(epochs=130)
    assert [lr_at(e, cfg) for e in (0, 89, 90, 119, 120)] == pytest.approx([0.01, 0.01, 0.002, 0.002, 0.0004])
    rows = clean_subset(1000, 0.25, seed=3)
    assert len(rows) == 250 and len(set(rows)) == 250 and (rows == clean_subset(1000, 0.25, seed=3)).all()
    assert not np.array_equal(rows, clean_subset(1000, 0.25, seed=4))


@pytest.mark.parametrize("change, words", [({"fraction": 0}, "fraction"), ({"loss": "mse"}, "compress or cosine"),
                                           ({"temperature": float("nan")}, "temperature"),
                                           ({"student": "teacher"}, "fresh or suspect")])
def test_bad_options_are_refused_when_read(change, words):
    with pytest.raises(BenchError, match=words):
        DistillConfig(**change)
