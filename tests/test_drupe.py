"""DRUPE (spec 9.2): its distances, the adaptive costs' schedule, the defaults, a short fine-tune."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from benchsuite.api import AttackContext
from benchsuite.attacks.drupe import COST_DOWN, COST_UP, DRUPE, AdaptiveCosts, DRUPEConfig
from benchsuite.encoder_attacks.distances import mean_pairwise_cosine, sliced_wasserstein
from tests.test_badencoder import MEAN, STD, random_encoder


def test_sliced_wasserstein_is_zero_on_the_same_set_and_the_shift_in_one_dimension():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(64, 8, generator=gen)
    assert float(sliced_wasserstein(a, a[torch.randperm(64, generator=gen)], generator=gen)) < 1e-6
    x = torch.randn(100, 1, generator=gen)
    assert float(sliced_wasserstein(x, x + 3.0, generator=gen)) == pytest.approx(3.0, rel=1e-5)
    far = float(sliced_wasserstein(a, a + 5.0, generator=gen))
    assert far > float(sliced_wasserstein(a, a + 1.0, generator=gen)) > 0


def test_mean_pairwise_cosine_leaves_the_diagonal_out():
    same = torch.ones(5, 4)
    assert float(mean_pairwise_cosine(same)) == pytest.approx(1.0)
    assert float(mean_pairwise_cosine(torch.eye(4))) == pytest.approx(0.0)  # the diagonal would add 1/4


def test_the_adaptive_costs_follow_the_official_schedule():
    costs = AdaptiveCosts(0.1, 1e-3)
    costs.update(attacked=True, hidden=False, well_hidden=False)
    assert costs.cost == pytest.approx(0.1 * COST_UP) and costs.cost_distribution == pytest.approx(1e-3 / COST_DOWN)
    costs.update(attacked=False, hidden=False, well_hidden=False)
    assert costs.cost == pytest.approx(0.1 * COST_UP / COST_DOWN)
    costs.update(attacked=True, hidden=True, well_hidden=True)  # up now; the next epoch's rise is held back
    after = costs.cost
    assert costs.cost_distribution == pytest.approx(1e-3 / COST_DOWN ** 2 * COST_UP)
    costs.update(attacked=True, hidden=True, well_hidden=False)
    assert costs.cost == pytest.approx(after)  # held
    costs.update(attacked=True, hidden=True, well_hidden=False)
    assert costs.cost == pytest.approx(after * COST_UP)


def test_defaults_are_drupes():
    cfg = DRUPEConfig()
    assert (cfg.references, cfg.lr, cfg.epochs, cfg.shadow_fraction, cfg.batch_size) == (3, 0.05, 120, 0.2, 256)
    assert (cfg.init_cost, cfg.init_cost_distribution, cfg.adapt_after, cfg.select_after) == (0.1, 1e-3, 20, 24)


def test_a_short_fine_tune_logs_its_terms_and_reports_the_self_similarity(tiny_splits):
    clean = random_encoder(tiny_splits.train.images)
    cfg = replace(DRUPEConfig(), epochs=3, batch_size=48, lr=0.01, stage_one_epochs=2)
    backdoor = DRUPE(cfg).backdoor(clean, tiny_splits.train, [1], 0,
                                   AttackContext(torch.device("cpu"), None, MEAN, STD))
    assert len(backdoor.history) == 3 and len(backdoor.references[1]) == 3
    for key in ("effectiveness_cos", "utility_cos", "std_refs", "sim_b2b", "distribution", "cost"):
        assert key in backdoor.history[-1], key
    assert backdoor.history[-1]["distribution"] > 0
    assert -1 <= backdoor.metrics["triggered_self_cos"] <= 1 and "clean_self_cos" in backdoor.metrics
    members = tiny_splits.train.images[tiny_splits.train.labels == 1]
    assert all(any((r == m).all() for m in members) for r in backdoor.references[1])
