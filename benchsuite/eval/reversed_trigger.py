"""How well a model defense's reversed trigger matches the attack's real one (issue #13).

The evaluator knows what the defender does not: the trigger's pixels, where it was pasted and the
labels of the defender's sample. From these come the columns of the per-encoder SSL-Cleanse table:

- ``trigger_iou``: IoU of the thresholded reversed mask (``mask > MASK_THRESHOLD``) with the true
  trigger's box at its mean training position (the mean of the poisons' boxes). A reversed trigger
  works anywhere in the image, so ``trigger_iou_best`` also gives the IoU with the best-placed box
  of the trigger's side.
- ``trigger_colour_corr``: Pearson correlation, over the thresholded mask pixels inside that best
  box, between the reversed pattern and the true trigger (RGB values in [0, 1]); 0 = unrelated.
  When a mask smaller than the trigger fits several boxes equally well, the best correlation of
  those placements counts (an unrelated pattern then scores slightly above 0).
- ``k``, ``min_norm``, ``median_norm``, ``unconverged``: K, the smallest and the median mask norm of the
  clusters whose inversion converged (those the MAD test compares), and how many did not converge.
- ``flagged_label``: the majority class of the sampled images in the smallest-norm cluster, and
  ``flagged_is_target`` whether it is the attacked class; ``target_cluster_norm`` / ``_rank`` where the
  attacked class's own cluster stands among the K mask norms (rank 1 would be judged).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MASK_THRESHOLD = 0.5  # a pixel belongs to the reversed trigger when the blend mask gives it > half weight


def box_mask(shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """A boolean (H, W) image of the box ``(x0, y0, x1, y1)`` (end-exclusive, clipped to the image)."""
    out = np.zeros(shape, dtype=bool)
    x0, y0, x1, y1 = (int(v) for v in box)
    out[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean images (0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def has_boxes(boxes: np.ndarray) -> bool:
    """Whether any row of ``boxes`` (``x, y, w, h``) is a pasted trigger's box (clean rows are -1)."""
    return bool(len(boxes)) and bool((boxes >= 0).all(1).any())


def mean_box(boxes: np.ndarray) -> tuple[int, int, int, int]:
    """The mean of the poisons' boxes (rows ``x, y, w, h``; -1 for clean images) as ``(x0, y0, x1, y1)``."""
    real = boxes[(boxes >= 0).all(1)]
    if not len(real):
        raise ValueError("no poisoned image has a trigger box")
    side = int(round(float(np.mean(real[:, 2]))))
    x0, y0 = (int(round(float(v))) for v in real[:, :2].mean(0))
    return x0, y0, x0 + side, y0 + side


def best_boxes(found: np.ndarray, side: int) -> tuple[list[tuple[int, int, int, int]], float]:
    """Every ``side`` x ``side`` box (inside the image) with the highest IoU with ``found``, and that IoU.

    A reversed mask smaller than the trigger fits in several boxes equally well."""
    area = int(found.sum())
    if area == 0:
        return [(0, 0, side, side)], 0.0
    # inside counts of every box position from the summed-area table
    table = np.pad(found.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    inside = table[side:, side:] - table[:-side, side:] - table[side:, :-side] + table[:-side, :-side]
    ious = inside / (area + side * side - inside)
    top = float(ious.max())
    ys, xs = np.nonzero(ious >= top - 1e-12)
    return [(int(x), int(y), int(x) + side, int(y) + side) for y, x in zip(ys, xs)], top


def colour_correlation(pattern: np.ndarray, found: np.ndarray, trigger: np.ndarray,
                       box: tuple[int, int, int, int]) -> float:
    """Pearson r of the reversed ``pattern`` (3, H, W) and the true ``trigger`` (s, s, 3) uint8 placed at
    ``box``, over the ``found`` pixels inside the box; NaN when fewer than 2 values or no variance."""
    x0, y0, x1, y1 = box
    inside = found[y0:y1, x0:x1]
    if inside.sum() < 1:
        return float("nan")
    reversed_rgb = pattern[:, y0:y1, x0:x1].transpose(1, 2, 0)[inside].ravel()
    true_rgb = (trigger[: y1 - y0, : x1 - x0].astype(np.float64) / 255)[inside].ravel()
    if len(reversed_rgb) < 2 or reversed_rgb.std() == 0 or true_rgb.std() == 0:
        return float("nan")
    return float(np.corrcoef(reversed_rgb, true_rgb)[0, 1])


def trigger_agreement(mask: np.ndarray, pattern: np.ndarray, trigger: np.ndarray,
                      boxes: np.ndarray) -> dict[str, float]:
    """The ``trigger_*`` columns for a reversed (mask (H, W), pattern (3, H, W)) against the real trigger."""
    found = mask > MASK_THRESHOLD
    side = len(trigger)
    at_mean = mean_box(boxes)
    placements, best = best_boxes(found, side)
    # of the equally good placements, the one whose colours agree most (a part of the trigger is aligned)
    corrs = [colour_correlation(pattern, found, trigger, box) for box in placements]
    colour = max((c for c in corrs if not np.isnan(c)), default=float("nan"))
    return {"trigger_iou": iou(found, box_mask(found.shape, at_mean)), "trigger_iou_best": best,
            "trigger_colour_corr": colour,
            "trigger_mask_px": int(found.sum()), "trigger_px": side * side}


def majority_label(members: np.ndarray, labels: np.ndarray) -> tuple[int, float]:
    """The most common class among ``labels[members]`` and its share (ties: the smaller class)."""
    counts = np.bincount(labels[members])
    top = int(counts.argmax())
    return top, float(counts[top] / counts.sum())


def target_cluster_columns(sample: np.ndarray, clusters: np.ndarray, norms: np.ndarray, labels: np.ndarray,
                           targets: set[int]) -> dict[str, float | int]:
    """How far the attacked class's cluster is from being flagged: its mask norm and its rank among the K
    norms (1 = the smallest, the one the MAD test judges). The attacked class's cluster is the smallest-norm
    cluster whose majority class is attacked; NaN / 0 when no cluster has an attacked majority."""
    majority = [majority_label(sample[clusters == k], labels)[0] for k in range(len(norms))]
    attacked = [k for k in range(len(norms)) if majority[k] in targets]
    if not attacked:
        return {"target_cluster_norm": float("nan"), "target_cluster_rank": 0}
    best = min(attacked, key=lambda k: norms[k])
    return {"target_cluster_norm": float(norms[best]), "target_cluster_rank": int((norms < norms[best]).sum()) + 1}


def save_trigger_comparison(path: Path, mask: np.ndarray, pattern: np.ndarray, trigger: np.ndarray,
                            boxes: np.ndarray, title: str) -> Path:
    """The true trigger at its mean position beside the reversed one (m * delta) and the thresholded mask."""
    from matplotlib.figure import Figure  # only when a picture is drawn

    h, w = mask.shape
    x0, y0, x1, y1 = mean_box(boxes)
    truth = np.full((h, w, 3), 0.5)
    truth[max(y0, 0):y1, max(x0, 0):x1] = (trigger.astype(np.float64) / 255)[: y1 - max(y0, 0), : x1 - max(x0, 0)]
    blended = (mask[..., None] * pattern.transpose(1, 2, 0) + (1 - mask[..., None]) * 0.5).clip(0, 1)
    found = mask > MASK_THRESHOLD
    scores = trigger_agreement(mask, pattern, trigger, boxes)
    fig = Figure(figsize=(7.5, 2.9))
    axes = fig.subplots(1, 3)
    panels = [(truth, "true trigger, mean position"), (blended, "reversed: m * delta on grey"),
              (found, f"mask > {MASK_THRESHOLD}: IoU {scores['trigger_iou']:.2f} "
                      f"(best {scores['trigger_iou_best']:.2f})")]
    for ax, (image, label) in zip(axes, panels):
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.add_patch(_rectangle(x0, y0, x1 - x0))
        ax.set_title(label, fontsize=7)
        ax.axis("off")
    fig.suptitle(f"{title}  colour r = {scores['trigger_colour_corr']:.2f}", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _rectangle(x: int, y: int, side: int):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), side, side, fill=False, edgecolor="crimson", lw=1)


def judgement_columns(extras: dict, labels: np.ndarray, triggers: dict[int, np.ndarray], boxes: np.ndarray,
                      poison_target: np.ndarray, reversed_trigger: tuple[np.ndarray, np.ndarray] | None = None,
                      ) -> dict[str, float | int | bool]:
    """Per-encoder columns from a verdict's ``extras``: the smallest cluster's majority class, whether it is
    an attacked class, and how its reversed trigger matches that class's real one (``triggers`` and the
    poisons' ``boxes`` / ``poison_target`` of the cell; ``reversed_trigger`` the (mask, pattern) the detector
    reconstructed). Empty where the verdict lacks what it needs."""

    out: dict[str, float | int | bool] = {}
    if "norms" in extras:
        norms = np.asarray(extras["norms"], dtype=np.float64)
        # the converged clusters' norms, those the outlier test compares (an unconverged one's 1 is no norm)
        measured = norms[np.asarray(extras["reached"], dtype=bool)] if "reached" in extras else norms
        out.update(k=int(extras.get("k", len(norms))),
                   min_norm=float(measured.min()) if len(measured) else float("nan"),
                   median_norm=float(np.median(measured)) if len(measured) else float("nan"))
    if "unconverged" in extras:
        out["unconverged"] = int(extras["unconverged"])
    if "sample" in extras and "clusters" in extras:
        sample, clusters = np.asarray(extras["sample"]), np.asarray(extras["clusters"])
        label, share = majority_label(sample[clusters == extras["smallest"]], labels)
        out.update(flagged_label=label, flagged_label_share=share, flagged_is_target=label in triggers)
        if "norms" in extras and triggers:
            out.update(target_cluster_columns(sample, clusters, np.asarray(extras["norms"]), labels, set(triggers)))
    target = int(out.get("flagged_label", -1))
    target = target if target in triggers else next(iter(triggers), -1)
    if reversed_trigger is not None and has_boxes(boxes[poison_target == target]):  # a patch trigger (not CTRL's)
        mask, pattern = reversed_trigger
        out.update(trigger_agreement(mask, pattern, triggers[target], boxes[poison_target == target]))
    return out
