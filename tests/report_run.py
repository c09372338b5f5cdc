"""A run folder for ``bench report`` in a second, trained on nothing: hand-written results and real attack pictures."""

from __future__ import annotations

from pathlib import Path

from benchsuite.api import Splits
from benchsuite.attacks.htba import HTBA, HTBAConfig
from benchsuite.reporting.attack_pictures import save_attack_pictures
from tests.test_publish import fake_run

CELL = "htba_t0_r1_s0"


def report_run(run_dir: Path, splits: Splits) -> Path:
    """``fake_run``'s results for seeds 0 and 1, and the cell's attack pictures as ``bench run`` saves them."""
    fake_run(run_dir, seeds=[0, 1])
    attack = HTBA(HTBAConfig(trigger_size=8.0))
    poisoning = attack.poison(splits.train, [0], 0.5, 0)
    save_attack_pictures(run_dir / "figures" / CELL, attack, poisoning, splits, {0: attack.patch_val(splits.val, 0, 0)},
                         title=CELL)
    return run_dir
