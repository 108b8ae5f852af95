"""Class-balanced pseudo-label terms (``loss.balanced_pseudo``) on hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.losses import (
    DualNetLoss,
    LossConfig,
    ModuleSwitches,
    class_balanced_mean,
    cps_kl_loss,
    entropy_filtered_loss,
)
from models.training.config import load_config


def test_class_balanced_mean_hand_values() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0]], requires_grad=True)
    labels = torch.tensor([[0, 0, 0, 1]])
    # class 0: mean(1, 2, 3) = 2; class 1: 4 -> (2 + 4) / 2 = 3 (the plain mean is 2.5)
    out = class_balanced_mean(values, labels, 3)
    assert float(out.detach()) == pytest.approx(3.0)
    out.backward()
    assert values.grad is not None
    assert values.grad[0].tolist() == pytest.approx([1 / 6, 1 / 6, 1 / 6, 1 / 2])
    mask = torch.tensor([[True, False, False, True]])
    assert float(class_balanced_mean(values, labels, 3, mask).detach()) == pytest.approx((1.0 + 4.0) / 2)
    empty = class_balanced_mean(values, labels, 3, torch.zeros(1, 4, dtype=torch.bool))
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_balanced_cps_weighs_each_pseudo_class_equally() -> None:
    # 4 voxels, K = 2: the teacher says background on 3, foreground on 1.
    teacher = torch.tensor([[0.9, 0.8, 0.7, 0.2], [0.1, 0.2, 0.3, 0.8]]).reshape(1, 2, 4)
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.5], [0.0, 0.5, 0.0, 0.0]]).reshape(1, 2, 4)
    logits.requires_grad_(True)
    pseudo = torch.tensor([[0, 0, 0, 1]])
    log_p = F.log_softmax(logits.detach(), 1)
    ce = -log_p.gather(1, pseudo.unsqueeze(1)).squeeze(1)[0]
    kl = (teacher * (teacher.log() - log_p)).sum(1)[0]
    w = torch.exp(-kl)
    expected = ((w[:3] * ce[:3]).mean() + w[3] * ce[3]) / 2
    plain, d_plain = cps_kl_loss(logits, teacher)
    bal, d_bal = cps_kl_loss(logits, teacher, balanced=True)
    assert float(bal.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(plain.detach()) == pytest.approx(float((w * ce).mean()), rel=1e-5)
    assert float(d_bal.detach()) == pytest.approx(float(d_plain.detach()))  # the KL regulariser is unchanged
    bal.backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0


def test_balanced_entropy_filter_uses_reliable_voxels_per_class() -> None:
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0], [0.0, 1.0, 0.0, 1.0]]).reshape(1, 2, 4)
    pseudo = torch.tensor([[0, 1, 0, 1]])
    reliable = torch.tensor([[True, True, True, False]])
    ce = F.cross_entropy(logits, pseudo, reduction="none")[0]
    assert float(entropy_filtered_loss(logits, pseudo, reliable, balanced=True)) == pytest.approx(
        float(((ce[0] + ce[2]) / 2 + ce[1]) / 2), rel=1e-6)
    assert float(entropy_filtered_loss(logits, pseudo, reliable)) == pytest.approx(
        float((ce[0] + ce[1] + ce[2]) / 3), rel=1e-6)


def test_switch_reaches_the_objective_and_the_config() -> None:
    g = torch.Generator().manual_seed(7)
    shape = (3, 2, 4, 4, 2)
    la, lb = torch.randn(shape, generator=g) * 2, torch.randn(shape, generator=g) * 2
    fa = fb = torch.randn(3, 5, 4, 4, 2, generator=g)
    y = torch.randint(0, 2, (1, 4, 4, 2), generator=g)
    mods = ModuleSwitches(supervised_cr=False, cosine=False, prototype=False)
    plain = DualNetLoss(LossConfig(q_start=40, q_end=40), mods, 2, 10)((la, fa), (lb, fb), y, 5)[1]
    cfg = LossConfig(q_start=40, q_end=40, balanced_pseudo=True)
    bal = DualNetLoss(cfg, mods, 2, 10)((la, fa), (lb, fb), y, 5)[1]
    expected_cps_a = cps_kl_loss(la[1:], torch.softmax(lb[1:], 1), balanced=True)[0]
    assert bal["cps_a"] == pytest.approx(float(expected_cps_a), rel=1e-6)
    assert bal["cps_a"] != pytest.approx(plain["cps_a"]) and bal["ef_b"] != pytest.approx(plain["ef_b"])
    assert bal["kl_a"] == pytest.approx(plain["kl_a"]) and math.isfinite(bal["total"])
    assert load_config("tiny").with_overrides({"loss.balanced_pseudo": True}).loss.balanced_pseudo is True
    assert load_config("la_10pct").loss.balanced_pseudo is False
