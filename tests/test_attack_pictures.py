"""Issue #14 point 5: every attack of a run is shown (triggers, poisoned and patched images, CTRL's difference)."""

from __future__ import annotations

import json

import numpy as np
from matplotlib.image import imread

from benchsuite.attacks.htba import HTBA, HTBAConfig
from benchsuite.attacks.multi_target import MultiTarget, MultiTargetConfig
from benchsuite.attacks.spectral import Spectral, difference_spectrum
from benchsuite.cli import main
from benchsuite.reporting.attack_pictures import (
    MANIFEST,
    amplified_difference,
    pick_poisons,
    save_attack_pictures,
)


def _pictures(tmp_path, attack, splits, targets):
    poisoning = attack.poison(splits.train, targets, 0.5, 0)
    patched = {t: attack.patch_val(splits.val, t, 0) for t in targets}
    return poisoning, save_attack_pictures(tmp_path / "cell", attack, poisoning, splits, patched, title="cell")


def test_ctrl_difference_is_nonzero_exactly_where_the_attack_changed_pixels(tiny_splits):
    poisoning = Spectral().poison(tiny_splits.train, [0], 0.5, 0)
    chosen = poisoning.poison_indices
    poisoned, clean = poisoning.train.images[chosen], tiny_splits.train.images[chosen]
    changed = poisoned != clean
    assert 0 < changed.mean() < 1  # CTRL moves many pixel values by a level or a few, not all
    diff = amplified_difference(poisoned, clean)
    assert ((diff != 128) == changed).all()
    one_level = changed & (np.abs(poisoned.astype(int) - clean) == 1)
    assert set(np.unique(diff[one_level])) <= {118, 138}  # x10 around mid-grey


def test_ctrl_spectrum_peaks_at_the_attacked_coefficients(tiny_splits):
    attack = Spectral()
    poisoning = attack.poison(tiny_splits.train, [0], 0.5, 0)
    chosen = poisoning.poison_indices
    spectrum = difference_spectrum(poisoning.train.images[chosen], tiny_splits.train.images[chosen], 32)
    assert spectrum.shape == (3, 32, 32)
    for channel in attack.config.channels:  # U and V: the two raised coefficients stand out
        top = np.argsort(spectrum[channel].ravel())[-2:]
        assert {divmod(int(i), 32) for i in top} == {(15, 15), (31, 31)}
        assert spectrum[channel].max() > 20 * spectrum[0].max()  # Y is only rounding noise


def test_every_attack_saves_its_pictures_and_captions(tmp_path, tiny_splits):
    for name, attack, targets in [("htba", HTBA(HTBAConfig(trigger_size=8.0)), [0]),
                                  ("multi", MultiTarget(MultiTargetConfig(trigger_size=8.0)), [0, 1, 2]),
                                  ("ctrl", Spectral(), [3])]:
        poisoning, paths = _pictures(tmp_path / name, attack, tiny_splits, targets)
        folder = tmp_path / name / "cell"
        names = [p.name for p in paths]
        assert names[:2] == ["attack_triggers.png", "attack_poisoned.png"]
        assert {f"attack_patched_t{t}.png" for t in targets} <= set(names)
        assert ("attack_spectrum.png" in names) == (name == "ctrl")
        assert all(imread(p).ndim == 3 for p in paths)  # real PNGs
        captions = json.loads((folder / MANIFEST).read_text())
        assert list(captions) == names
        assert ("x10" in captions["attack_poisoned.png"]) == (name == "ctrl")
        assert not list(folder.glob(".*"))  # no temporary file left beside them
    shown = pick_poisons(poisoning.poison_target)
    assert len(shown) == 8


def test_multi_target_pictures_show_every_targets_poisons(tiny_splits):
    poisoning = MultiTarget(MultiTargetConfig(trigger_size=8.0)).poison(tiny_splits.train, [0, 1, 2], 0.5, 0)
    assert sorted(poisoning.triggers) == [0, 1, 2]
    shown = pick_poisons(poisoning.poison_target)
    assert len(shown) == 8 and set(poisoning.poison_target[shown]) == {0, 1, 2}


def test_a_tiny_run_shows_its_attacks_in_the_report(tmp_path, tiny_args):
    assert main(["run", "--attack", "htba,spectral", "--defense", "none", "--no-reference", *tiny_args]) == 0
    run = next(p for p in (tmp_path / "runs").iterdir() if p.name != "cache")
    for cell in ("htba_t0_r1_s0", "spectral_t0_r1_s0"):
        assert (run / "figures" / cell / "attack_poisoned.png").is_file()
        assert (run / "figures" / cell / "attack_patched_t0.png").is_file()
    assert (run / "figures" / "spectral_t0_r1_s0" / "attack_spectrum.png").is_file()
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    attacks, tables = page.index("<h2>Attacks</h2>"), page.index("<h2>Tables</h2>")
    assert attacks < page.index("<h2>Attack success at a glance</h2>") < tables  # seen before any number
    section = page[attacks:tables]
    assert section.count('alt="attack_') == 2 * 3 + 1  # triggers, poisoned, patched per cell; CTRL's spectrum
    assert "x10 around mid-grey" in section and "PSNR" in section
    assert 'alt="attack_' not in page[tables:]  # not repeated among the defenses' figures
