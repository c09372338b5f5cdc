"""ACC, FP and ASR from a confusion matrix (spec 1.6, PatchSearch main_lincls)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(true: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(true), np.asarray(pred)), 1)
    return cm


def accuracy(cm: np.ndarray) -> float:
    """Top-1 accuracy in percent over every image (target class included)."""
    return 100.0 * np.trace(cm) / max(1, cm.sum())


def false_positives(cm: np.ndarray, target: int) -> int:
    """FP_t: non-target images predicted as the target = column sum minus the diagonal."""
    return int(cm[:, target].sum() - cm[target, target])


def attack_success_rate(cm: np.ndarray, target: int) -> float:
    """ASR in percent: FP_t over the number of non-target images."""
    non_target = cm.sum() - cm[target].sum()
    return 100.0 * false_positives(cm, target) / max(1, non_target)


def target_share(cm: np.ndarray, target: int) -> float:
    """BadEncoder's ASR in percent: the share of all triggered images, the target class's own included,
    classified as the target (PatchSearch's ASR, :func:`attack_success_rate`, leaves the target class out)."""
    return 100.0 * float(cm[:, target].sum()) / max(1, int(cm.sum()))


def prediction_shares(cm: np.ndarray, target: int) -> np.ndarray:
    """Percent of the non-target images predicted as each class (the target's entry is the ASR)."""
    counts = np.delete(cm, target, axis=0).sum(axis=0)
    return 100.0 * counts / max(1, counts.sum())
