"""The statistics behind bench/ssl_phantoms.py and bench/ssl_seeds.py, on hand-computed values."""

from __future__ import annotations

import argparse
import copy
import math

import numpy as np
import pytest

from bench.ssl_metrics import boundary_band
from bench.ssl_phantoms import VARIANTS, auroc, base_config, variant_config
from bench.ssl_seeds import _normalised, gap_closed, summarize, table
from models.training.config import load_config


def test_benchmark_full_method_is_the_phantoms_ssl_preset() -> None:
    """The benchmark's "full" variant at its defaults is configs/phantoms_ssl.yaml plus the run's fields."""
    args = argparse.Namespace(iterations=600, seed=1337, patch=[48, 48, 32], width=4, set=[])
    full, unlabeled, all_labels = variant_config(base_config(args, 4), "full")
    preset = load_config("phantoms_ssl")
    assert unlabeled and not all_labels
    assert full.with_overrides({"name": preset.name, "checkpoint_every": preset.checkpoint_every}) == preset
    assert preset.loss.balanced_pseudo and preset.loss.pseudo_dice and preset.num_labeled == 4
    assert all(vars(preset.modules).values())
    sup, unlabeled, _ = variant_config(base_config(args, 4), "supervised")
    assert not unlabeled and not any(vars(sup.modules).values())
    # the warm-up is a share of the run and the contrastive ramp spans it; --set reaches the config
    short = base_config(argparse.Namespace(iterations=50, seed=1, patch=[32, 32, 32], width=2,
                                           set=["loss.balanced_pseudo=false"]), 2)
    assert (short.loss.lambda_c_rampup, short.loss.balanced_pseudo) == (None, False)
    assert short.loss.warmup_iterations(short.iterations) == 5 and short.loss.w_u == 1.0
    assert short.networks.net_b.width == 2 and short.num_labeled == 2


def test_control_is_the_full_config_with_every_unlabeled_weight_zero() -> None:
    args = argparse.Namespace(iterations=600, seed=1337, patch=[48, 48, 32], width=4, set=[])
    base = base_config(args, 4)
    full, _, _ = variant_config(base, "full")
    control, unlabeled, all_labels = variant_config(base, "control")
    assert unlabeled and not all_labels  # the unlabeled crops are forwarded
    assert (control.loss.w_u, control.loss.lambda_c) == (0.0, 0.0)
    assert control.modules == full.modules and all(vars(control.modules).values())
    assert control.with_overrides({"loss.w_u": full.loss.w_u, "loss.lambda_c": full.loss.lambda_c}) == full
    assert VARIANTS[:3] == ("supervised", "control", "full")


def test_saved_settings_ignore_seed_and_modules() -> None:
    """Results saved before a field existed, or with another base module set, still match."""
    cfg = load_config("phantoms_ssl").to_dict()
    saved = copy.deepcopy({"cases": 40, "config": {**cfg, "seed": 7, "modules": {"prototype": False}}})
    del saved["config"]["loss"]["classwise_q"]  # a field added after the file was written
    expected = {k: v for k, v in cfg.items() if k not in ("seed", "modules")}
    assert _normalised(saved) == {"cases": 40, "config": expected}


def test_auroc_hand_values() -> None:
    # 4 positive-negative pairs: (0.35 vs 0.1) (0.35 vs 0.4) (0.8 vs 0.1) (0.8 vs 0.4) -> 3 of 4 ordered.
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == pytest.approx(0.75)
    # A tie between a positive and a negative counts one half.
    assert auroc(np.array([0.5, 0.5, 0.9]), np.array([1, 0, 1], bool)) == pytest.approx(0.75)
    assert math.isnan(auroc(np.array([0.1, 0.2]), np.array([1, 1], bool)))


def _res(dice: float, per_case: dict[str, float]) -> dict[str, object]:
    return {"dice": dice, "dice_std": 0.0, "dice_per_case": per_case}


def test_summarize_paired_differences_and_t_interval() -> None:
    runs = {
        "d2_t1": {"full": _res(0.7, {"a": 0.8, "b": 0.6}), "supervised": _res(0.6, {"a": 0.7, "b": 0.5})},
        "d3_t1": {"full": _res(0.6, {"c": 0.7, "d": 0.5}), "supervised": _res(0.3, {"c": 0.3, "d": 0.5})},
        "d4_t1": {"supervised": _res(0.9, {"e": 0.9})},  # unfinished run: not paired, not counted
    }
    s = summarize(runs, "full", "supervised")
    assert s["runs"] == 2 and s["cases"] == 4
    assert s["mean_delta"] == pytest.approx(0.2)
    # deltas 0.1, 0.3: sd 0.1414, se 0.1, t(0.975, 1 df) = 12.7062
    assert s["ci95"] == pytest.approx([0.2 - 1.27062, 0.2 + 1.27062], abs=1e-4)
    assert s["runs_better"] == 2 and not s["clearly_above"]
    assert (s["cases_better"], s["cases_worse"]) == (3, 0)
    assert s["median_case_delta"] == pytest.approx(0.1)


def test_summarize_clearly_above_when_interval_excludes_zero() -> None:
    runs = {f"d{i}_t1": {"full": _res(0.5 + d, {"x": 0.5 + d}), "supervised": _res(0.5, {"x": 0.5})}
            for i, d in enumerate([0.10, 0.12, 0.08])}
    s = summarize(runs, "full", "supervised")
    assert s["mean_delta"] == pytest.approx(0.10)
    assert s["ci95"][0] > 0 and s["clearly_above"]
    assert summarize({"d1_t1": {"full": _res(0.5, {})}}) == {"runs": 0, "cases": 0}


def test_table_has_one_row_per_run_and_the_difference() -> None:
    runs = {"d2_t7": {"full": _res(0.75, {}), "supervised": _res(0.5, {})}}
    lines = table(runs, ["supervised", "full"]).splitlines()
    assert lines[2] == "| 2 | 7 | 0.500 ± 0.000 | 0.750 ± 0.000 | +0.250 |"
    assert lines[3] == "| **mean** | | 0.500 | 0.750 | |"
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    runs["d2_t7"]["full"].update(fn_share=0.25, fp_share=0.125)
    runs["d2_t7"]["supervised"].update(fn_share=0.5, fp_share=0.0)
    last = table(runs, ["supervised", "full"]).splitlines()[-1]
    assert last == "| **missed / extra share** | | 0.500 / 0.000 | 0.250 / 0.125 | |"


def test_comparisons_row_per_ablation() -> None:
    from bench.ssl_seeds import comparisons

    runs = {f"d{i}_t1": {"full": _res(0.6, {"x": 0.6}), "supervised": _res(0.5, {"x": 0.5}),
                         "no_cosine": _res(0.6 - d, {"x": 0.6 - d})} for i, d in enumerate([0.02, 0.04])}
    lines = comparisons(runs, ["supervised", "full", "no_cosine"]).splitlines()
    assert len(lines) == 4
    assert lines[2].startswith("| full − supervised | 2 | +0.100 | +0.100 … +0.100 | 2 | 2 / 0 of 2 |")
    assert lines[3].startswith("| full − no_cosine | 2 | +0.030 | -0.097 … +0.157 | 2 | 2 / 0 of 2 |")


def test_uncertainty_stats_error_shares() -> None:
    from types import SimpleNamespace

    from bench.ssl_phantoms import UncertaintyStats

    label = np.zeros((6, 6, 6), np.uint8)
    label[1:3, 1:3, 1:3] = 1  # 8 true voxels
    mask = np.zeros_like(label)
    mask[1:3, 1:3, 1:2] = 1  # 4 found, 4 missed
    mask[5, 5, 0:2] = 1  # 2 extra
    pred = SimpleNamespace(mask=mask, entropy=np.zeros(label.shape, np.float32), regions=[])
    stats = UncertaintyStats()
    stats(SimpleNamespace(id="c1"), pred, label)
    out = stats.result()
    assert out["errors_per_case"] == {"c1": {"fn_share": 0.5, "fp_share": 0.25}}
    assert (out["fn_share"], out["fp_share"]) == (0.5, 0.25)
    assert out["wrong_fraction"] == pytest.approx(6 / 216)


def test_summarize_by_set_averages_training_seeds_first() -> None:
    runs = {
        "d30_t1": {"full": _res(0.7, {"a": 0.7}), "control": _res(0.6, {"a": 0.6})},  # +0.1
        "d30_t7": {"full": _res(0.5, {"a": 0.5}), "control": _res(0.6, {"a": 0.6})},  # -0.1
        "d31_t1": {"full": _res(0.8, {"b": 0.8}), "control": _res(0.6, {"b": 0.6})},  # +0.2
        "d31_t7": {"full": _res(0.6, {"b": 0.6}), "control": _res(0.6, {"b": 0.6})},  # 0.0
    }
    per_run = summarize(runs)  # the default comparator is the control
    assert per_run["runs"] == 4 and per_run["mean_delta"] == pytest.approx(0.05)
    s = summarize(runs, by_set=True)
    # set means 0.0 and +0.1: mean 0.05, sd 0.0707, se 0.05, t(0.975, 1 df) = 12.7062
    assert s["runs"] == 2 and s["mean_delta"] == pytest.approx(0.05)
    assert s["ci95"] == pytest.approx([0.05 - 0.63531, 0.05 + 0.63531], abs=1e-4)
    assert s["runs_better"] == 1 and s["cases"] == 4 and not s["clearly_above"]


def test_gap_closed_share() -> None:
    runs = {"d30_t1": {"supervised": _res(0.6, {}), "full": _res(0.72, {}),
                       "fully_supervised": _res(0.8, {})}}
    assert gap_closed(runs) == pytest.approx(0.6)
    assert gap_closed({"d30_t1": {"full": _res(0.7, {})}}) is None


def test_boundary_band_is_three_voxels_around_both_boundaries() -> None:
    truth = np.zeros((1, 1, 21), np.uint8)
    truth[0, 0, 5:8] = 1  # boundary voxels 5 and 7 (6 is inside)
    pred = np.zeros_like(truth)
    pred[0, 0, 15] = 1  # a one-voxel prediction: its own boundary
    band = boundary_band(pred, truth, 3)
    # volume edges along the size-1 axes make every foreground voxel a boundary voxel here
    assert np.flatnonzero(band[0, 0]).tolist() == [*range(2, 11), *range(12, 19)]
    assert not boundary_band(np.zeros_like(truth), np.zeros_like(truth)).any()
