"""Detection metrics of a filter defense against the ground-truth poisons (PatchSearch / PoisonCAM tables).

Two "top-k accuracies": PatchSearch's (Table 1) is the share of poisons among the k top-ranked images
(``topk_acc``); PoisonCAM's Detection ACC (Figure 1, Appendix C.4) is the share of the k top-ranked images
whose located window holds any part of the trigger (``topk_window_acc``). IoU / CR of the top-k come
over the top-k's poisons (``iou``, ``catch_rate``) and over every top-k image, a non-poison counting 0
(``iou_all``, ``catch_rate_all``: PoisonCAM Figures 4-5 score the retrieved windows, whatever they are).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

TOP_K = (5, 10, 20, 50, 100, 500)
WINDOW_K = (20, 50, 100)  # PoisonCAM Figure 1's Detection ACC
CONTROL_SIZE = 500  # clean images with a pasted foreign square, for the pasting control


def _percent(part: int, whole: int) -> float:
    """``100 * part / whole``; NaN (undefined, not 0) when ``whole`` is 0."""
    return 100.0 * part / whole if whole else float("nan")


def removal_metrics(remove: np.ndarray, poison_mask: np.ndarray) -> dict[str, float]:
    """Total removed, recall and precision (percent) of a removal mask.

    Recall without any poison and precision with nothing removed are undefined: NaN, which the tables show
    as ``n/a`` and leave out of means.
    """
    caught = int((remove & poison_mask).sum())
    return {"removed": int(remove.sum()),
            "recall": _percent(caught, int(poison_mask.sum())),
            "precision": _percent(caught, int(remove.sum()))}


def guard_columns(extras: dict) -> dict[str, float]:
    """``trigger_found`` (False: a no-trigger guard fired and the filter removed nothing) and ``best_flip_share``
    (what the guard tested) from a filter's extras; NaN for a filter without a guard."""
    found = extras.get("trigger_found")
    share = extras.get("best_flip_share")
    return {"trigger_found": float("nan") if found is None else bool(found),
            "best_flip_share": float("nan") if share is None else 100.0 * float(share)}


def random_removal(n: int, count: int, seed: int) -> np.ndarray:
    """A removal mask of ``count`` of ``n`` images drawn at random: the control a filter's removal is read against.

    Seeded by the seed and the count only, so two filters that remove as many images share one control.
    """
    remove = np.zeros(n, dtype=bool)
    remove[np.random.default_rng([seed, count, 0x5EED]).choice(n, size=count, replace=False)] = True
    return remove


def ranking(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score (ties keep index order)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def _fits(k: int, scores: np.ndarray, n_scored: int | None) -> bool:
    """Is the top-k made of scored images only? A search that scores a subset fills the rest of the ranking
    with images it never looked at (in index order), which say nothing of the defense."""
    return k <= (len(scores) if n_scored is None else min(n_scored, len(scores)))


def topk_accuracy(scores: np.ndarray, poison_mask: np.ndarray, ks=TOP_K,
                  n_scored: int | None = None) -> dict[str, float]:
    """Percent of poisons among the k highest-scored images; NaN when k exceeds the dataset or the
    ``n_scored`` images the defense scored (None: all)."""
    order = ranking(scores)
    return {f"top{k}_acc": (100.0 * poison_mask[order[:k]].mean() if _fits(k, scores, n_scored) else float("nan"))
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


def _has_boxes(windows: np.ndarray | None, boxes: np.ndarray) -> bool:
    """Window metrics apply: the defense locates windows and the attack's trigger has a box."""
    return windows is not None and bool((np.asarray(boxes)[:, 2] > 0).any())


def topk_window_accuracy(scores: np.ndarray, windows: np.ndarray | None, boxes: np.ndarray,
                         ks=WINDOW_K, n_scored: int | None = None) -> dict[str, float]:
    """PoisonCAM's Detection ACC (percent): share of the k top-ranked images whose located window holds any
    part of their trigger (a clean image or a missing window is a miss). NaN when k exceeds the dataset or
    the scored images, or window metrics do not apply (no windows, or a trigger without a box)."""
    applies = _has_boxes(windows, boxes)
    order = ranking(scores)
    out = {}
    for k in ks:
        if not applies or not _fits(k, scores, n_scored):
            out[f"top{k}_window_acc"] = float("nan")
            continue
        top = order[:k]
        valid = (windows[top, 2] > 0) & (boxes[top, 2] > 0)
        hit = valid & (_intersection(np.asarray(windows[top], np.float64), np.asarray(boxes[top], np.float64)) > 0)
        out[f"top{k}_window_acc"] = 100.0 * float(hit.mean())
    return out


def window_metrics(scores: np.ndarray, windows: np.ndarray | None, boxes: np.ndarray, k: int = 20,
                   n_scored: int | None = None) -> dict[str, float]:
    """Mean IoU and catch rate (percent) of the located windows of the top-k ranked images.

    ``iou`` / ``catch_rate``: over the top-k images that carry a trigger box and have a window (NaN if none);
    ``iou_all`` / ``catch_rate_all``: over all k, a clean image or a missing window counting 0 (PoisonCAM
    Figures 4-5). All NaN when the defense locates no windows, the attack's trigger has no box, or k exceeds
    the ``n_scored`` images the defense scored.
    """
    nan = {"iou": float("nan"), "catch_rate": float("nan"), "iou_all": float("nan"), "catch_rate_all": float("nan")}
    # a top-k reaching past the scored images is NaN; one past a small, fully scored set is the whole set
    if not _has_boxes(windows, boxes) or (n_scored is not None and n_scored < len(scores) and k > n_scored):
        return nan
    top = ranking(scores)[:k]
    iou, cr = box_iou(windows[top], boxes[top]), catch_rate(windows[top], boxes[top])
    scored = (boxes[top, 0] >= 0) & (windows[top, 0] >= 0)  # as _boxed_top
    out = {"iou_all": 100.0 * float(iou.mean()), "catch_rate_all": 100.0 * float(cr.mean())}
    if not scored.any():
        return {**nan, **out}
    return {"iou": 100.0 * float(iou[scored].mean()), "catch_rate": 100.0 * float(cr[scored].mean()), **out}


def retrieval_curve(scores: np.ndarray, windows: np.ndarray | None, boxes: np.ndarray,
                    ks=TOP_K, n_scored: int | None = None) -> dict[str, list[float]]:
    """PoisonCAM Figure 4: :func:`window_metrics` for every k, as columns ``k``, ``iou``, ``catch_rate``,
    ``iou_all``, ``catch_rate_all`` (percent) and ``n_boxed`` (how many of the top k carry a trigger box and
    have a located window).

    Each image is scored against its own recorded box, whichever (target, trigger) pair put it there.
    NaN where k exceeds the dataset or the scored images, or no top-k image has a box (a spectral trigger, or
    no windows).
    """
    columns = ("iou", "catch_rate", "iou_all", "catch_rate_all")
    curve: dict[str, list[float]] = {"k": [], **{c: [] for c in columns}, "n_boxed": []}
    for k in ks:
        fits = _fits(k, scores, n_scored)
        m = window_metrics(scores, windows, boxes, k, n_scored) if fits else dict.fromkeys(columns, float("nan"))
        curve["k"].append(k)
        for c in columns:
            curve[c].append(m[c])
        curve["n_boxed"].append(0 if windows is None or not fits else len(_boxed_top(scores, windows, boxes, k)))
    return curve


def control_images(images: np.ndarray, labels: np.ndarray, poison_target: np.ndarray, boxes: np.ndarray, seed: int,
                   n: int = CONTROL_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The pasting control: up to ``n`` clean images of non-target classes, each with a square cut from another
    such image pasted where and as large as a random poison's trigger box (the attack's sizes and places).

    Built from the ground truth, never shown to the defense. Returns (images, host indices, pasted boxes),
    deterministic for ``seed``; None when no poison carries a trigger box (spectral, or no poisons).
    """
    pasted = np.flatnonzero((poison_target >= 0) & (boxes[:, 2] > 0))
    clean = np.flatnonzero((poison_target < 0) & ~np.isin(labels, np.unique(poison_target[poison_target >= 0])))
    if len(pasted) == 0 or len(clean) < 2:
        return None
    rng = np.random.default_rng([seed, 8128])
    hosts = rng.choice(clean, min(n, len(clean)), replace=False)
    where = boxes[rng.choice(pasted, len(hosts))].astype(np.int64)
    height, width = images.shape[1:3]
    out = images[hosts].copy()
    for i, (host, (x, y, w, h)) in enumerate(zip(hosts, where)):
        source = rng.choice(clean[clean != host])
        sx, sy = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
        out[i, y:y + h, x:x + w] = images[source, sy:sy + h, sx:sx + w]
    return out, hosts, where


def control_flag_rate(flag: Callable[[np.ndarray], np.ndarray] | None,
                      control: tuple[np.ndarray, np.ndarray, np.ndarray] | np.ndarray | None) -> float:
    """Percent of the control images ``flag`` (a filter's removal decision on new images) would remove.
    NaN when the filter cannot judge new images or there is no control set."""
    if flag is None or control is None:
        return float("nan")
    images = control[0] if isinstance(control, tuple) else control
    return 100.0 * float(np.asarray(flag(images), dtype=bool).mean())


def pasting_control(flag: Callable[[np.ndarray], np.ndarray] | None, poisoning, seed: int,
                    n: int = CONTROL_SIZE) -> float:
    """:func:`control_flag_rate` on the :func:`control_images` of a :class:`benchsuite.api.Poisoning`."""
    control = control_images(poisoning.train.images, poisoning.train.labels, poisoning.poison_target,
                             poisoning.boxes, seed, n)
    return control_flag_rate(flag, control)


def per_target_detection(remove: np.ndarray, scores: np.ndarray, windows: np.ndarray | None, boxes: np.ndarray,
                         poison_target: np.ndarray, n_scored: int | None = None) -> dict[int, dict[str, float]]:
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
                              **window_metrics(scores, windows, own_boxes, n_scored=n_scored)}
    return per_target
