"""Detection metrics of a filter defense against the ground-truth poisons (PatchSearch / PoisonCAM tables)."""

from __future__ import annotations

import numpy as np

TOP_K = (5, 10, 20, 50, 100, 500)


def removal_metrics(remove: np.ndarray, poison_mask: np.ndarray) -> dict[str, float]:
    """Total removed, recall and precision (percent) of a removal mask."""
    caught = int((remove & poison_mask).sum())
    return {"removed": int(remove.sum()),
            "recall": 100.0 * caught / max(1, int(poison_mask.sum())),
            "precision": 100.0 * caught / max(1, int(remove.sum()))}


def ranking(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score (ties keep index order)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def topk_accuracy(scores: np.ndarray, poison_mask: np.ndarray, ks=TOP_K) -> dict[str, float]:
    """Percent of poisons among the k highest-scored images; NaN when k exceeds the dataset."""
    order = ranking(scores)
    return {f"top{k}_acc": (100.0 * poison_mask[order[:k]].mean() if k <= len(order) else float("nan"))
            for k in ks}


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    return ix * iy


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of (n, 4) x, y, w, h boxes; 0 where a box is missing (-1 rows)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    inter = _intersection(a, b)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    valid = (a[:, 2] > 0) & (b[:, 2] > 0)
    return np.where(valid, inter / np.maximum(union, 1e-12), 0.0)


def catch_rate(window: np.ndarray, trigger: np.ndarray) -> np.ndarray:
    """Share of the trigger box inside the window (PoisonCAM's CR), per row; 0 where a box is missing."""
    window, trigger = np.asarray(window, dtype=np.float64), np.asarray(trigger, dtype=np.float64)
    valid = (window[:, 2] > 0) & (trigger[:, 2] > 0)
    return np.where(valid, _intersection(window, trigger) / np.maximum(trigger[:, 2] * trigger[:, 3], 1e-12), 0.0)


def _boxed_top(scores: np.ndarray, windows: np.ndarray, boxes: np.ndarray, k: int) -> np.ndarray:
    """The top-k ranked images that carry a trigger box and have a located window."""
    top = ranking(scores)[:k]
    return top[(boxes[top, 0] >= 0) & (windows[top, 0] >= 0)]


def window_metrics(scores: np.ndarray, windows: np.ndarray | None, boxes: np.ndarray, k: int = 20) -> dict[str, float]:
    """Mean IoU and catch rate (percent) of the located windows of the top-k ranked images that carry a
    trigger box. NaN when the defense locates no windows or the attack's trigger has no box."""
    top = np.zeros(0, dtype=np.int64) if windows is None else _boxed_top(scores, windows, boxes, k)
    if len(top) == 0:
        return {"iou": float("nan"), "catch_rate": float("nan")}
    return {"iou": 100.0 * float(box_iou(windows[top], boxes[top]).mean()),
            "catch_rate": 100.0 * float(catch_rate(windows[top], boxes[top]).mean())}


def retrieval_curve(scores: np.ndarray, windows: np.ndarray | None, boxes: np.ndarray,
                    ks=TOP_K) -> dict[str, list[float]]:
    """PoisonCAM Figure 4: :func:`window_metrics` for every k, as columns ``k``, ``iou``, ``catch_rate``
    (percent) and ``n_boxed`` (how many of the top k carry a trigger box and have a located window).

    Each image is scored against its own recorded box, whichever (target, trigger) pair put it there.
    NaN where k exceeds the dataset or no top-k image has a box (a spectral trigger, or no windows).
    """
    curve: dict[str, list[float]] = {"k": [], "iou": [], "catch_rate": [], "n_boxed": []}
    for k in ks:
        fits = k <= len(scores)
        m = window_metrics(scores, windows, boxes, k) if fits else {"iou": float("nan"), "catch_rate": float("nan")}
        curve["k"].append(k)
        curve["iou"].append(m["iou"])
        curve["catch_rate"].append(m["catch_rate"])
        curve["n_boxed"].append(0 if windows is None or not fits else len(_boxed_top(scores, windows, boxes, k)))
    return curve


def per_target_detection(remove: np.ndarray, scores: np.ndarray, windows: np.ndarray | None, boxes: np.ndarray,
                         poison_target: np.ndarray) -> dict[int, dict[str, float]]:
    """For a multi-target poisoning, each target's recall (its own poisons removed) and the IoU / catch rate
    of the top-20 windows on its own trigger's boxes; removed, precision and top-k accuracy stay whole-set
    (a removal is not attributed to one target). Empty for a single-target poisoning."""
    targets = np.unique(poison_target[poison_target >= 0])
    if len(targets) < 2:
        return {}
    per_target = {}
    for target in targets.tolist():
        own = poison_target == target
        own_boxes = np.where(own[:, None], boxes, -1)
        per_target[target] = {"recall": removal_metrics(remove, own)["recall"],
                              **window_metrics(scores, windows, own_boxes)}
    return per_target
