"""Case-level out-of-distribution score: features, the nearest-neighbour rule, updates, the verdict."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.inference.ood import FEATURES, case_features, fit_reference, score_case, update_reference


def _rows(rng: np.random.Generator, n: int, shift: float = 0.0) -> list[dict[str, float]]:
    return [{f: float(rng.normal(shift, 1.0)) for f in FEATURES} for _ in range(n)]


def test_case_features_hand_computed() -> None:
    image = torch.arange(1000, dtype=torch.float32).reshape(1, 10, 10, 10) / 999.0
    probs = torch.zeros(2, 2, 10, 10, 10)
    probs[:, 0] = 1.0
    probs[0, :, :5] = torch.tensor([0.2, 0.8]).reshape(2, 1, 1, 1)  # net A: foreground in the first half
    probs[1, :, :2] = torch.tensor([0.4, 0.6]).reshape(2, 1, 1, 1)  # net B: in the first fifth
    f = case_features(image, probs)
    assert f["q50"] == pytest.approx(0.5, abs=1e-6) and f["q01"] == pytest.approx(0.01, abs=1e-3)
    # mean probabilities: x < 2 -> (0.3, 0.7), 2 <= x < 5 -> (0.6, 0.4), else (1, 0): foreground = x < 2
    assert f["fg_log_share"] == pytest.approx(math.log10(0.2 + 1e-4))
    assert f["fg_confidence"] == pytest.approx(0.7)
    h_fg = -(0.3 * math.log(0.3) + 0.7 * math.log(0.7)) / math.log(2)
    h_mid = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4)) / math.log(2)
    assert f["roi_entropy"] == pytest.approx((200 * h_fg + 300 * h_mid) / 500, rel=1e-5)
    assert f["disagreement"] == pytest.approx(300 / 500)  # union 500 voxels, labels differ on 300
    empty = case_features(image, torch.stack([torch.ones(10, 10, 10), torch.zeros(10, 10, 10)]))
    assert empty["fg_confidence"] == 1.0 and empty["disagreement"] == 0.0 and empty["roi_entropy"] == 0.0


def test_in_distribution_low_shifted_high() -> None:
    rng = np.random.default_rng(0)
    ref = fit_reference(_rows(rng, 40))
    assert ref["cases"] == 40 and len(ref["vectors"]) == 40 and ref["threshold"] > 0
    inside = [score_case(ref, r) for r in _rows(rng, 200)]
    far = [score_case(ref, r) for r in _rows(rng, 20, shift=6.0)]
    assert np.mean([s["out_of_distribution"] for s in inside]) <= 0.05
    assert all(s["out_of_distribution"] for s in far)
    assert all(0.0 <= s["ood_score"] < 1.0 for s in inside + far)
    assert "unlike the model's training data" in far[0]["ood_reason"]
    assert "training cases" in far[0]["ood_reason"]
    assert inside[0]["ood_reason"].startswith("within") or inside[0]["out_of_distribution"]


def test_score_is_distance_over_distance_plus_threshold() -> None:
    rows = [{f: 0.0 for f in FEATURES}, {f: 0.0 for f in FEATURES}, {f: 1.0 for f in FEATURES}]
    ref = fit_reference(rows, margin=2.0)
    case = {f: 0.0 for f in FEATURES}
    case["q50"] = 10.0
    s = score_case(ref, case)
    scale = ref["scale"][0]
    assert ref["scale"] == [scale] * len(FEATURES)  # MAD 0 -> half the std, 0.5 * sqrt(2/9)
    assert scale == pytest.approx(0.5 * math.sqrt(2 / 9))
    d = math.sqrt(9.0**2 + 8 * 1.0**2) / scale  # nearest reference: the row of ones, not the zeros (10 / s)
    assert s["distance"] == pytest.approx(d, rel=1e-3)
    assert s["ood_score"] == pytest.approx(d / (d + ref["threshold"]), abs=1e-4)


def test_update_adds_a_site_without_loosening_the_old_one() -> None:
    rng = np.random.default_rng(1)
    ref = fit_reference(_rows(rng, 40))
    site_b = _rows(rng, 12, shift=6.0)
    assert all(score_case(ref, r)["out_of_distribution"] for r in site_b)
    both = update_reference(ref, site_b[:6])
    assert both["cases"] == 46 and len(both["vectors"]) == 46 and both["scale"] == ref["scale"]
    assert np.mean([score_case(both, r)["out_of_distribution"] for r in site_b[6:]]) <= 1 / 6
    assert all(score_case(both, r)["out_of_distribution"] for r in _rows(rng, 10, shift=-6.0))


def test_without_reference_everything_is_none() -> None:
    s = score_case(None, {f: 0.0 for f in FEATURES})
    assert s["ood_score"] is None and s["out_of_distribution"] is None and "no reference" in s["ood_reason"]
    with pytest.raises(ValueError, match="at least 2"):
        fit_reference(_rows(np.random.default_rng(0), 1))
