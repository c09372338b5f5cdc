"""Pictures of a cell's attack, so a report reader sees what was attacked before reading the numbers.

Per cell, in ``<run>/figures/<cell>/``: the trigger(s), poisoned training images and patched validation
images beside their clean originals and, for a trigger without a box (CTRL), the amplified difference;
then whatever figures the attack draws of itself (``Attack.extra_figures``: CTRL's DCT spectrum).
``attack_pictures.json`` lists the files in reading order with their captions (the report shows them in
its "Attacks" section).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from benchsuite.api import Attack, PatchedSet, Poisoning
from benchsuite.core.checkpoint import atomic_write, save_json
from benchsuite.data import ImageDataset, Splits

N_SHOWN = 8  # images per row (issue #14: 8 poisoned and 8 patched images)
AMPLIFY = 10  # the difference is shown as 128 + AMPLIFY * (poisoned - clean): CTRL's is a few levels at most
MANIFEST = "attack_pictures.json"
SAMPLE_CAP = 512  # poisons behind the PSNR and the spectrum (evenly spread; bounds memory at 224 px)
CHUNK = 64  # images per float64 batch


def amplified_difference(poisoned: np.ndarray, clean: np.ndarray, factor: float = AMPLIFY) -> np.ndarray:
    """``128 + factor * (poisoned - clean)`` clipped to uint8: mid-grey exactly where nothing changed."""
    diff = poisoned.astype(np.float64) - clean.astype(np.float64)
    return np.clip(np.round(128.0 + factor * diff), 0, 255).astype(np.uint8)


def psnr(poisoned: np.ndarray, clean: np.ndarray) -> float:
    """Mean PSNR (dB, 0-255 scale) of poisoned images against their originals; inf when identical."""
    mse = np.concatenate([((poisoned[i:i + CHUNK].astype(np.float64) - clean[i:i + CHUNK]) ** 2)
                          .reshape(len(clean[i:i + CHUNK]), -1).mean(1) for i in range(0, len(clean), CHUNK)])
    with np.errstate(divide="ignore"):
        return float(np.mean(10.0 * np.log10(255.0 ** 2 / mse)))


def pick_poisons(poison_target: np.ndarray, n: int = N_SHOWN) -> np.ndarray:
    """Up to ``n`` poisoned indices, taking each target's poisons in turn (so every trigger is shown)."""
    groups = [np.flatnonzero(poison_target == t) for t in np.unique(poison_target[poison_target >= 0])]
    order = [g[i] for i in range(max((len(g) for g in groups), default=0)) for g in groups if i < len(g)]
    return np.array(order[:n], dtype=np.int64)


def pick_spread(candidates: np.ndarray, n: int = N_SHOWN) -> np.ndarray:
    """Up to ``n`` of ``candidates`` spread evenly over them (deterministic)."""
    if len(candidates) <= n:
        return candidates
    return candidates[np.linspace(0, len(candidates) - 1, n).round().astype(np.int64)]


def _save(fig: Figure, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path


def _show(ax, image: np.ndarray, title: str = "") -> None:
    ax.imshow(image, interpolation="nearest", vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def _strip(rows: list[tuple[str, np.ndarray]], titles: list[str], title: str) -> Figure:
    """A grid of images: one named row per kind (clean, poisoned, difference), one column per image."""
    cols = max(len(images) for _, images in rows)
    fig = Figure(figsize=(0.6 + 1.2 * cols, 0.5 + 1.3 * len(rows)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows), cols, squeeze=False))
    for r, (name, images) in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            if c >= len(images):
                ax.set_axis_off()
                continue
            _show(ax, images[c], titles[c] if r == 0 else "")
        axes[r, 0].set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


def _rows(poisoned: np.ndarray, clean: np.ndarray, invisible: bool, what: str) -> list[tuple[str, np.ndarray]]:
    rows = [("clean original", clean), (what, poisoned)]
    if invisible:
        rows.append((f"difference x{AMPLIFY:g}", amplified_difference(poisoned, clean)))
    return rows


def _triggers(triggers: dict[int, np.ndarray], classes: list[str], invisible: bool, title: str) -> Figure:
    targets = sorted(triggers)
    rows = 2 if invisible else 1
    fig = Figure(figsize=(0.6 + 1.6 * max(1, len(targets)), 0.6 + 1.6 * rows), layout="constrained")
    axes = fig.subplots(rows, max(1, len(targets)), squeeze=False)
    for c, t in enumerate(targets):
        trigger = triggers[t]
        _show(axes[0, c], trigger, f"target {t} ({classes[t]})" if t < len(classes) else f"target {t}")
        if invisible:  # CTRL's pattern is a window of mid-grey carrying the trigger: show its deviation
            grey = np.full_like(trigger, 128)
            _show(axes[1, c], amplified_difference(trigger, grey), f"deviation from grey x{AMPLIFY:g}")
    if not targets:
        axes[0, 0].set_axis_off()
    fig.suptitle(title, fontsize=9)
    return fig


def save_attack_pictures(folder: Path, attack: Attack, poisoning: Poisoning, clean: Splits,
                         patched: dict[int, PatchedSet], title: str = "") -> list[Path]:
    """Write the cell's attack pictures and their manifest into ``folder``; return the PNG paths."""
    folder = Path(folder)
    title = title or attack.name
    train: ImageDataset = clean.train
    classes = train.classes
    chosen = poisoning.poison_indices
    # a trigger with no box anywhere is blended over the whole image (CTRL): show the amplified difference
    invisible = bool(len(chosen)) and not (poisoning.boxes[chosen] >= 0).any()
    sample = pick_spread(chosen, SAMPLE_CAP) if invisible else chosen[:0]
    sample_poisoned, sample_clean = poisoning.train.images[sample], train.images[sample]

    def poisoned_sample() -> tuple[np.ndarray, np.ndarray]:
        """An even spread of up to SAMPLE_CAP poisons and their clean originals (for the attack's own figures)."""
        spread = pick_spread(chosen, SAMPLE_CAP)
        return poisoning.train.images[spread], train.images[spread]
    captions: dict[str, str] = {}

    def add(name: str, fig: Figure, caption: str) -> None:
        _save(fig, folder / name)
        captions[name] = caption

    def amplified(what: str) -> str:
        return f"; bottom row: the difference {what} - clean, x{AMPLIFY:g} around mid-grey" if invisible else ""

    add("attack_triggers.png", _triggers(poisoning.triggers, classes, invisible, title),
        f"{attack.name}: the trigger of each target"
        + (f" (a mid-grey window carrying it; below, its deviation from grey x{AMPLIFY:g})" if invisible else ""))

    shown = pick_poisons(poisoning.poison_target)
    if len(shown):
        titles = [f"#{i} t={poisoning.poison_target[i]}" for i in shown]
        fig = _strip(_rows(poisoning.train.images[shown], train.images[shown], invisible, "poisoned"), titles,
                     f"{title}: poisoned training images")
        quality = f" (mean PSNR {psnr(sample_poisoned, sample_clean):.1f} dB over {len(sample)} poisons)" \
            if invisible else ""
        add("attack_poisoned.png", fig,
            f"{attack.name}: {len(shown)} of {len(chosen)} poisoned training images under their clean "
            f"originals{quality}{amplified('poisoned')}")

    for t, patch in sorted(patched.items()):
        picked = pick_spread(np.flatnonzero(clean.val.labels != t))  # the images the patched ASR counts
        names = [f"{classes[y]}" if y < len(classes) else str(y) for y in clean.val.labels[picked]]
        fig = _strip(_rows(patch.images[picked], clean.val.images[picked], invisible, f"patched (t={t})"), names,
                     f"{title}: patched validation images, target {t}")
        add(f"attack_patched_t{t}.png", fig,
            f"{attack.name}: {len(picked)} validation images with target {t}'s trigger under their clean "
            f"originals{amplified('patched')}")

    for name, fig, caption in attack.extra_figures(poisoned_sample, title):  # the attack's own (CTRL's spectrum)
        add(name, fig, caption)
    save_json(folder / MANIFEST, captions)
    return [folder / name for name in captions]


def save_model_attack_pictures(folder: Path, attack: str, triggers: dict[int, np.ndarray],
                               references: dict[int, np.ndarray], clean: Splits, patched: dict[int, PatchedSet],
                               title: str = "") -> list[Path]:
    """A model attack's pictures: its trigger per target, the reference image(s) it pulls triggered images
    towards, and triggered validation images beside their clean originals; with the manifest."""
    folder = Path(folder)
    title = title or attack
    classes = clean.train.classes
    captions: dict[str, str] = {}

    def add(name: str, fig: Figure, caption: str) -> None:
        _save(fig, folder / name)
        captions[name] = caption

    add("attack_triggers.png", _triggers(triggers, classes, False, title),
        f"{attack}: the trigger of each target (mid-grey where it leaves the image as it is)")
    for t, refs in sorted(references.items()):
        fig = _strip([("reference", refs[:N_SHOWN])], [f"ref {i}" for i in range(min(len(refs), N_SHOWN))],
                     f"{title}: reference image(s) of target {t}")
        add(f"attack_references_t{t}.png", fig,
            f"{attack}: the {len(refs)} reference image(s) of target {t} that triggered images are pulled towards")
    for t, patch in sorted(patched.items()):
        picked = pick_spread(np.flatnonzero(clean.val.labels != t))
        names = [f"{classes[y]}" if y < len(classes) else str(y) for y in clean.val.labels[picked]]
        fig = _strip(_rows(patch.images[picked], clean.val.images[picked], False, f"triggered (t={t})"), names,
                     f"{title}: triggered validation images, target {t}")
        add(f"attack_patched_t{t}.png", fig,
            f"{attack}: {len(picked)} validation images with target {t}'s trigger under their clean originals")
    save_json(folder / MANIFEST, captions)
    return [folder / name for name in captions]


def load_captions(folder: Path) -> dict[str, str]:
    """The attack pictures of a figures folder in reading order, with captions ({} when none)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {}
    try:
        captions = json.loads(path.read_text())
    except ValueError:
        return {}
    if not isinstance(captions, dict):
        return {}
    return {name: str(text) for name, text in captions.items() if (Path(folder) / name).is_file()}
