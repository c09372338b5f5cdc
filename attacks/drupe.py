"""DRUPE (Tao et al., IEEE S&P 2024; spec section 9.2): BadEncoder made to evade detectors that look for
collapsed trigger embeddings, after the official code (Gwinhen/DRUPE ``main.py``).

Three reference images, each triggered image matched to its closest one (``L0 = -mean_i max_j
cos(f'(x_i+t), f'(r_j))``), the spread of the per-reference similarity (``std_refs``) penalised; a
distribution term, the sliced-Wasserstein distance between the batch's triggered and clean embeddings
(un-normalised) over the clean ones' mean per-dimension std, weighted by ``cost_1``; an anti-collapse term,
the mean off-diagonal cosine of the triggered embeddings (``sim_b2b``), weighted by ``cost``. Epoch 1 is a
warm-up (utility terms and the references' mutual similarity only), epochs 2-4 add ``L0`` and
``2 std_refs``; the adaptive costs move after epoch 20 (x1.25 up, /1.25^1.25 down, patience 1) on whether
``L0 < -0.96``, the utility cosines > 0.9 and ``sim_b2b < 0.6``; the kept model is the one with the smallest
distribution term after epoch 24 (the last one if none qualified).

Departures from the official code, each for a defect there: ``sim_b2b`` is the mean over distinct pairs
(the official ``S - diag_embed(S)`` broadcasts to a cube and gives ``mean(S) (1 - 1/B)``, the diagonal
included); the cost updates read the epoch's mean ``sim_b2b`` (the official, its last batch's); the kept
model is judged by its own epoch's distribution term (the official may compare a value left from an
earlier epoch).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchsuite.api import Attack, hookimpl
from benchsuite.attacks.badencoder import BadEncoder, BadEncoderConfig
from benchsuite.core.console import progress_bar
from benchsuite.core.typed import Count, Fraction, NonNegative, Positive, Sized
from benchsuite.encoder_attacks.distances import mean_pairwise_cosine, sliced_wasserstein
from benchsuite.encoder_attacks.finetune import augment_references, embed, frozen_copy, normalise
from benchsuite.encoder_attacks.trigger import Trigger
from benchsuite.ssl.augment import to_float

COST_UP, COST_DOWN = 1.25, 1.25 ** 1.25  # official: cost_multiplier_up / _down


@dataclass(frozen=True)
class DRUPEConfig(BadEncoderConfig):
    references: Sized = 3  # DRUPE: 3
    shadow_fraction: Fraction = 0.2  # DRUPE: 10,000 of CIFAR-10's 50,000
    epochs: Sized = 120  # DRUPE: 120
    lr: Positive = 0.05  # DRUPE: 0.05
    init_cost: NonNegative = 0.1  # the anti-collapse weight's start (official init_cost)
    init_cost_distribution: NonNegative = 1e-3  # the distribution term's (official init_cost_1)
    adapt_after: Count = 20  # costs adapt after this epoch (official fix_epoch)
    select_after: Count = 24  # the kept model: smallest distribution term after this epoch
    stage_one_epochs: Count = 5  # epochs before the adaptive terms (official stage_1_epoch, CIFAR)
    effectiveness_goal: float = 0.96  # official l0_threshold (CIFAR): -L0 above it counts as attacked
    utility_goal: float = 0.9
    collapse_goal: float = 0.6  # official b2b_sim_threshold
    projections: Sized = 50  # sliced-Wasserstein directions (POT's default)


class DRUPE(BadEncoder):
    name = "drupe"
    Config = DRUPEConfig
    description = "DRUPE: BadEncoder with distribution preservation and anti-collapse terms (evades detectors)"

    def fine_tune(self, clean: nn.Module, images: np.ndarray, references: np.ndarray, trigger: Trigger, seed: int,
                  context) -> tuple[nn.Module, list[dict[str, float]]]:
        return train_drupe(clean, images, references, trigger, self.config, seed, context.device, context.mean,
                           context.std, self.name)


class AdaptiveCosts:
    """DRUPE's two adaptive weights and their counters (patience 1), updated once an epoch after epoch 20.

    ``cost`` (anti-collapse) rises while the attack works (effectiveness and both utilities at their goals)
    and falls otherwise; ``cost_distribution`` rises while it works and the triggered embeddings are spread
    (``hidden``); ``well_hidden`` (spread by a further 0.1) holds ``cost`` back one epoch."""

    def __init__(self, cost: float, cost_distribution: float) -> None:
        self.init, self.init_distribution = cost, cost_distribution
        self.cost, self.cost_distribution = cost, cost_distribution
        self.up = self.down = self.up_distribution = self.down_distribution = 0

    @staticmethod
    def _moved(value: float, init: float, up: bool) -> float:
        if up:
            return init if value == 0 else value * COST_UP
        return value / COST_DOWN

    def update(self, attacked: bool, hidden: bool, well_hidden: bool) -> None:
        self.up, self.down = (self.up + 1, 0) if attacked else (0, self.down + 1)
        if self.up >= 1:
            self.up, self.cost = 0, self._moved(self.cost, self.init, True)
        elif self.down >= 1:
            self.down, self.cost = 0, self._moved(self.cost, self.init, False)
        if hidden:
            self.up_distribution, self.down_distribution = self.up_distribution + 1, 0
            if well_hidden:
                self.up -= 1
        else:
            self.up_distribution, self.down_distribution = 0, self.down_distribution + 1
        if self.up_distribution >= 1:
            self.up_distribution = 0
            self.cost_distribution = self._moved(self.cost_distribution, self.init_distribution, True)
        elif self.down_distribution >= 1:
            self.down_distribution = 0
            self.cost_distribution = self._moved(self.cost_distribution, self.init_distribution, False)


def train_drupe(clean: nn.Module, images: np.ndarray, references: np.ndarray, trigger: Trigger, cfg: DRUPEConfig,
                seed: int, device: torch.device, mean: tuple[float, ...], std: tuple[float, ...],
                label: str) -> tuple[nn.Module, list[dict[str, float]]]:
    """Fine-tune a copy of ``clean`` with DRUPE's schedule; return the kept model and per-epoch statistics."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    clean = clean.to(device).eval()
    shadow_clean = embed(clean, images, mean, std, device)
    ref_x = to_float(torch.from_numpy(references).to(device))
    ref_clean = embed(clean, references, mean, std, device)
    student, params = frozen_copy(clean, device)
    optimiser = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    costs = AdaptiveCosts(cfg.init_cost, cfg.init_cost_distribution)
    best, kept = float("inf"), None
    history = []
    batch = min(cfg.batch_size, len(images))
    steps = max(1, len(images) // batch)  # drop_last, as the official loader
    with progress_bar(f"{label} fine-tune", total=cfg.epochs) as advance:
        for epoch in range(1, cfg.epochs + 1):
            order = torch.randperm(len(images), generator=gen)[: steps * batch]
            sums = dict.fromkeys(("effectiveness_cos", "reference_cos", "utility_cos", "std_refs", "sim_b2b",
                                  "distribution", "loss"), 0.0)
            for start in range(0, len(order), batch):
                idx = order[start:start + batch]
                x = to_float(torch.from_numpy(images[idx.numpy()]).to(device))
                r = len(ref_x)
                raw = student(normalise(torch.cat([x, trigger.paste_float(x), ref_x,
                                                   augment_references(ref_x, gen)]), mean, std))
                b = len(x)
                raw_x, raw_t = raw[:b], raw[b:2 * b]
                fx, ft = F.normalize(raw_x, dim=1), F.normalize(raw_t, dim=1)
                fr, fra = F.normalize(raw[2 * b:2 * b + r], dim=1), F.normalize(raw[2 * b + r:], dim=1)
                to_refs = fr @ ft.T  # (R, B)
                std_refs = to_refs.mean(1).std() if r > 1 else to_refs.new_zeros(())
                effectiveness = to_refs.max(0).values.mean()
                reference = (fra * ref_clean).sum(1).mean()
                utility = (fx * shadow_clean[idx.to(device)]).sum(1).mean()
                pairs = torch.triu_indices(r, r)  # i <= j, the diagonal included (official loss_3)
                refs_alike = (fr @ fr.T)[pairs[0], pairs[1]].mean()
                sim_b2b = mean_pairwise_cosine(raw_t)
                distribution = sliced_wasserstein(raw_t, raw_x, cfg.projections, gen) / raw_x.std(0).mean()
                utility_terms = -cfg.lambda1 * reference - cfg.lambda2 * utility
                if epoch == 1:  # warm-up
                    loss = utility_terms + 0.5 * refs_alike - (0.2 * refs_alike if refs_alike < 0.2 else 0)
                else:
                    loss = -effectiveness + utility_terms
                    if epoch < cfg.stage_one_epochs:
                        loss = loss + 2 * std_refs
                    else:
                        loss = loss + costs.cost * (std_refs + sim_b2b) + costs.cost_distribution * distribution \
                            + 0.5 * std_refs
                        if std_refs > 0.1:
                            loss = loss + 1.5 * std_refs
                    if refs_alike > 0.5:
                        loss = loss + refs_alike
                    elif refs_alike > 0.4:
                        loss = loss + 0.2 * refs_alike
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                for name, value in (("effectiveness_cos", effectiveness), ("reference_cos", reference),
                                    ("utility_cos", utility), ("std_refs", std_refs), ("sim_b2b", sim_b2b),
                                    ("distribution", distribution), ("loss", loss)):
                    sums[name] += float(value.detach()) / steps
            measure = None
            if epoch > cfg.adapt_after:
                attacked = sums["effectiveness_cos"] > cfg.effectiveness_goal and \
                    sums["reference_cos"] > cfg.utility_goal and sums["utility_cos"] > cfg.utility_goal
                hidden = attacked and sums["sim_b2b"] < cfg.collapse_goal
                costs.update(attacked, hidden, hidden and sums["sim_b2b"] < cfg.collapse_goal - 0.1)
                measure = sums["distribution"] if hidden else None
            if epoch > cfg.select_after and measure is not None and measure < best:
                best, kept = measure, copy.deepcopy(student.state_dict())
            history.append({"epoch": epoch, **sums, "cost": costs.cost, "cost_distribution": costs.cost_distribution,
                            "kept": float(measure is not None and measure == best)})
            advance(info=f"eff {sums['effectiveness_cos']:.3f} util {sums['utility_cos']:.3f} "
                         f"b2b {sums['sim_b2b']:.3f}")
    if kept is not None:
        student.load_state_dict(kept)
    return student, history


@hookimpl
def benchsuite_attacks() -> list[type[Attack]]:
    return [DRUPE]
