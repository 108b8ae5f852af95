"""The loss terms as the method defines them (issue 16): hand-computed values on tiny tensors and gradients.

L_cr against the labels on the XOR of the confident-foreground masks, foreground-only Dice (MONAI), the
per-class entropy percentile by default, the prototype term when both classes are predicted and when a
class has no reliable voxel, the schedules (warm-up, ramps) and the ``winner`` teacher option.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.losses import (
    DualNetLoss,
    LossConfig,
    ModuleSwitches,
    confident_disagreement_loss,
    confident_foreground_xor,
    entropy_filtered_loss,
    joint_pseudo_label,
    label_cr_loss,
    prototype_contrastive_loss,
    reliable_mask,
    soft_dice_loss,
)


def probs(rows: list[list[float]]) -> torch.Tensor:
    """Voxel rows [p_0, ..., p_K-1] -> (1, K, V) float32."""
    return torch.tensor(rows, dtype=torch.float32).t().unsqueeze(0).contiguous()


def binary(fg: list[float]) -> torch.Tensor:
    return probs([[1.0 - p, p] for p in fg])


def only(**on: bool) -> ModuleSwitches:
    base = dict.fromkeys(("supervised_cr", "cps_kl", "entropy_filter", "cosine", "prototype"), False)
    return ModuleSwitches(**{**base, **on})


# ----------------------------------------------------------------------------- L_cr against the labels

# p_fg >= 0.6: A confident at v0 v1 v4, B at v0 v2 v5 -> XOR = v1 v2 v4 v5 (4 voxels).
FG_A = [0.9, 0.7, 0.3, 0.55, 0.65, 0.2]
FG_B = [0.8, 0.4, 0.7, 0.5, 0.1, 0.6]
LABEL = [1, 0, 1, 1, 1, 0]


def test_label_cr_binary_hand_values_and_gradient() -> None:
    pa, pb = binary(FG_A).requires_grad_(True), binary(FG_B).requires_grad_(True)
    y = torch.tensor([LABEL])
    xor = confident_foreground_xor(pa, pb, 0.6)
    assert xor.shape == (1, 1, 6) and xor[0, 0].tolist() == [False, True, True, False, True, True]
    loss_a, loss_b = label_cr_loss(pa, y, xor), label_cr_loss(pb, y, xor)
    # A: (0.7-0)^2 + (0.3-1)^2 + (0.65-1)^2 + (0.2-0)^2 = 1.1425, / 4 voxels
    assert float(loss_a.detach()) == pytest.approx(0.285625, rel=1e-6)
    # B: (0.4-0)^2 + (0.7-1)^2 + (0.1-1)^2 + (0.6-0)^2 = 1.42, / 4
    assert float(loss_b.detach()) == pytest.approx(0.355, rel=1e-6)
    (loss_a + loss_b).backward()
    assert pa.grad is not None and pb.grad is not None
    # d/dp_fg = 2 (p_fg - y) / |M| on the mask, 0 elsewhere; nothing on the background channel.
    exp_a = [0.0, 2 * 0.7 / 4, 2 * (0.3 - 1) / 4, 0.0, 2 * (0.65 - 1) / 4, 2 * 0.2 / 4]
    assert pa.grad[0, 1].tolist() == pytest.approx(exp_a, abs=1e-6)
    assert pa.grad[0, 0].abs().sum() == 0.0
    exp_b = [0.0, 2 * 0.4 / 4, 2 * (0.7 - 1) / 4, 0.0, 2 * (0.1 - 1) / 4, 2 * 0.6 / 4]
    assert pb.grad[0, 1].tolist() == pytest.approx(exp_b, abs=1e-6)


def test_label_cr_multiclass_is_per_foreground_class() -> None:
    pa = probs([[0.1, 0.7, 0.2], [0.2, 0.2, 0.6], [0.5, 0.3, 0.2], [0.3, 0.65, 0.05]])
    pb = probs([[0.3, 0.3, 0.4], [0.2, 0.1, 0.7], [0.1, 0.2, 0.7], [0.2, 0.6, 0.2]])
    y = torch.tensor([[1, 2, 0, 1]])
    xor = confident_foreground_xor(pa, pb, 0.6)
    # class 1: A at v0 v3, B at v3 -> v0; class 2: A at v1, B at v1 v2 -> v2
    assert xor[0].tolist() == [[True, False, False, False], [False, False, True, False]]
    # A: class 1 (0.7-1)^2 = 0.09, class 2 (0.2-0)^2 = 0.04 -> mean 0.065; B: 0.49 and 0.49
    assert float(label_cr_loss(pa, y, xor)) == pytest.approx(0.065, rel=1e-6)
    assert float(label_cr_loss(pb, y, xor)) == pytest.approx(0.49, rel=1e-6)


def test_label_cr_empty_mask_is_connected_zero() -> None:
    p = binary([0.9, 0.1]).requires_grad_(True)
    xor = confident_foreground_xor(p, p.detach(), 0.6)
    loss = label_cr_loss(p, torch.tensor([[0, 1]]), xor)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert p.grad is not None and float(p.grad.abs().sum()) == 0.0


def test_objective_uses_label_cr_by_default_and_the_old_term_on_request() -> None:
    la, lb = torch.log(binary(FG_A)).reshape(1, 2, 6, 1, 1), torch.log(binary(FG_B)).reshape(1, 2, 6, 1, 1)
    feats = torch.zeros(1, 3, 6, 1, 1)
    y = torch.tensor([LABEL]).reshape(1, 6, 1, 1)
    terms = DualNetLoss(LossConfig(), only(supervised_cr=True), 2, 10)((la, feats), (lb, feats), y, 0)[1]
    assert terms["sup_cr_a"] == pytest.approx(0.285625, rel=1e-5)
    assert terms["sup_cr_b"] == pytest.approx(0.355, rel=1e-5)
    old = DualNetLoss(LossConfig(cr_target="other_net"), only(supervised_cr=True), 2, 10)(
        (la, feats), (lb, feats), y, 0)[1]
    expected = confident_disagreement_loss(torch.softmax(la, 1), torch.softmax(lb, 1), 0.6)
    assert old["sup_cr_a"] == pytest.approx(float(expected), rel=1e-6)
    with pytest.raises(ValueError, match="cr_target"):
        LossConfig(cr_target="teacher")


# ----------------------------------------------------------------------------- foreground-only Dice


def test_dice_is_foreground_only_hand_values() -> None:
    p = probs([[0.1, 0.7, 0.2], [0.2, 0.2, 0.6], [0.5, 0.3, 0.2], [0.3, 0.65, 0.05]])
    y = torch.tensor([[1, 2, 0, 1]])
    e = 1e-5
    # class 1: I = 0.7 + 0.65, P = 1.85, G = 2; class 2: I = 0.6, P = 1.05, G = 1
    d1, d2 = (2 * 1.35 + e) / (1.85 + 2 + e), (2 * 0.6 + e) / (1.05 + 1 + e)
    assert float(soft_dice_loss(p, y, e)) == pytest.approx(1 - (d1 + d2) / 2, rel=1e-6)
    d0 = (2 * 0.5 + e) / (1.1 + 1 + e)  # background: I = 0.5, P = 1.1, G = 1
    assert float(soft_dice_loss(p, y, e, include_background=True)) == pytest.approx(
        1 - (d0 + d1 + d2) / 3, rel=1e-6)
    # squared: class 1 Σ p² = 0.49 + 0.04 + 0.09 + 0.4225; class 2 Σ p² = 0.04 + 0.36 + 0.04 + 0.0025
    s1, s2 = (2 * 1.35 + e) / (1.0425 + 2 + e), (2 * 0.6 + e) / (0.4425 + 1 + e)
    assert float(soft_dice_loss(p, y, e, squared=True)) == pytest.approx(1 - (s1 + s2) / 2, rel=1e-6)


def test_dice_gradient_matches_the_hand_derivative() -> None:
    fg, g = [0.9, 0.2, 0.6, 0.1], [0, 1, 1, 1]
    p = binary(fg).requires_grad_(True)
    e = 1e-5
    soft_dice_loss(p, torch.tensor([g]), e).backward()
    inter, denom = sum(a * b for a, b in zip(fg, g, strict=True)), sum(fg) + sum(g) + e
    # L = 1 - (2I + e) / D  ->  dL/dp_v = -(2 g_v D - (2I + e)) / D^2
    expected = [-(2 * gv * denom - (2 * inter + e)) / denom ** 2 for gv in g]
    assert p.grad is not None
    assert p.grad[0, 1].tolist() == pytest.approx(expected, rel=1e-5)
    assert float(p.grad[0, 0].abs().sum()) == 0.0  # the background channel is not scored


# ----------------------------------------------------------------------------- per-class percentile


def test_entropy_filter_is_per_pseudo_class_by_default() -> None:
    assert LossConfig().classwise_q is True
    # 6 unlabeled voxels, nets agree; the background is more certain than the 2 foreground voxels.
    rows = [[0.99, 0.01], [0.98, 0.02], [0.97, 0.03], [0.96, 0.04], [0.3, 0.7], [0.4, 0.6]]
    pu = probs(rows)
    pseudo = joint_pseudo_label(pu, pu)
    glob = reliable_mask(pu, 20.0)[0]
    per_class = reliable_mask(pu, 20.0, pseudo)[0]
    assert glob[0].tolist() == [True, True, False, False, False, False]  # background only
    # 20th percentile within each class: background 4 values -> 1, foreground 2 values -> 1 (v4, h lower)
    assert per_class[0].tolist() == [True, False, False, False, True, False]
    logits = torch.log(pu).reshape(1, 2, 6, 1, 1)
    lab_logits = torch.zeros(1, 2, 6, 1, 1)
    batch = torch.cat([lab_logits, logits])
    feats = torch.zeros(2, 3, 6, 1, 1)
    y = torch.zeros(1, 6, 1, 1, dtype=torch.long)
    cfg = LossConfig(q_start=20, q_end=20, unlabeled_warmup=0.0)
    terms = DualNetLoss(cfg, only(entropy_filter=True), 2, 10)((batch, feats), (batch, feats), y, 0)[1]
    # CE on v0 and v4 toward their pseudo-labels: (-log 0.99 - log 0.7) / 2
    assert terms["ef_a"] == pytest.approx((-math.log(0.99) - math.log(0.7)) / 2, rel=1e-5)
    plain = DualNetLoss(LossConfig(q_start=20, q_end=20, classwise_q=False, unlabeled_warmup=0.0),
                        only(entropy_filter=True), 2, 10)((batch, feats), (batch, feats), y, 0)[1]
    assert plain["ef_a"] == pytest.approx((-math.log(0.99) - math.log(0.98)) / 2, rel=1e-5)
    expected = entropy_filtered_loss(logits.reshape(1, 2, 6), pseudo, per_class)
    assert terms["ef_a"] == pytest.approx(float(expected), rel=1e-6)


# ----------------------------------------------------------------------------- prototype term


def _infonce(anchor: np.ndarray, keys: np.ndarray, k: int, tau: float) -> float:
    s = keys @ (anchor / np.linalg.norm(anchor)) / tau
    return float(-(s[k] - np.log(np.exp(s).sum())))


def test_prototype_non_zero_with_gradient_when_both_classes_predicted() -> None:
    f = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])  # (V, C)
    labels = torch.tensor([[0, 1, 0, 1]])
    reliable = torch.tensor([[True, True, False, False]])
    feats = torch.tensor(f.T).float()[None].requires_grad_(True)
    loss = prototype_contrastive_loss(feats, labels, reliable, 2, temperature=0.1)
    # prototypes [1, 0] and [0, 1]; v2 is equidistant -> log 2; v3: log(1 + exp(2 (1/sqrt 2) / 0.1))
    expected = (math.log(2) + math.log1p(math.exp(2 / math.sqrt(2) / 0.1))) / 2
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert feats.grad is not None
    per_voxel = feats.grad[0].abs().sum(0)
    assert float(per_voxel[:2].sum()) == 0.0 and float(per_voxel[2]) > 0 and float(per_voxel[3]) > 0


def test_prototype_class_without_reliable_voxel_uses_all_its_voxels() -> None:
    f = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0], [-1.0, 1.0]])
    labels = torch.tensor([[0, 0, 1, 1]])
    reliable = torch.tensor([[True, False, False, False]])  # class 1 has no reliable voxel
    feats = torch.tensor(f.T).float()[None].requires_grad_(True)
    loss = prototype_contrastive_loss(feats, labels, reliable, 2, temperature=0.5)
    fn = f / np.linalg.norm(f, axis=1, keepdims=True)
    p0, p1 = fn[0], fn[[2, 3]].mean(0)  # class 1: the mean over all of its voxels
    keys = np.stack([p0 / np.linalg.norm(p0), p1 / np.linalg.norm(p1)])
    expected = np.mean([_infonce(f[1], keys, 0, 0.5), _infonce(f[2], keys, 1, 0.5),
                        _infonce(f[3], keys, 1, 0.5)])
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5) and expected > 0.1
    loss.backward()
    assert feats.grad is not None
    per_voxel = feats.grad[0].abs().sum(0)
    assert float(per_voxel[0]) == 0.0 and all(float(per_voxel[i]) > 0 for i in (1, 2, 3))


def test_prototype_single_predicted_class_is_connected_zero() -> None:
    feats = torch.randn(1, 3, 5, requires_grad=True)
    loss = prototype_contrastive_loss(feats, torch.zeros(1, 5, dtype=torch.long),
                                      torch.tensor([[True, False, False, True, False]]), 2)
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-7) and loss.requires_grad


# ----------------------------------------------------------------------------- schedules


def test_default_schedule_is_warm_up_then_full_weight_and_contrast_ramp() -> None:
    cfg = LossConfig()
    assert (cfg.w_u, cfg.w_u_rampup, cfg.lambda_c, cfg.lambda_c_rampup, cfg.unlabeled_warmup) == (
        1.0, 0, 0.1, None, 0.1)
    assert cfg.warmup_iterations(100) == 10
    assert cfg.weights(9, 100) == (0.0, 0.0)
    w_u, lam = cfg.weights(10, 100)
    assert w_u == 1.0 and lam == pytest.approx(0.1 * math.exp(-5 * 0.9 ** 2))
    assert cfg.weights(100, 100) == (1.0, pytest.approx(0.1))
    assert LossConfig(lambda_c_rampup=20, unlabeled_warmup=0.0).weights(10, 100)[1] == pytest.approx(
        0.1 * math.exp(-5 * 0.25))
    with pytest.raises(ValueError, match="unlabeled_warmup"):
        LossConfig(unlabeled_warmup=1.0)


def test_warm_up_iterations_are_labeled_only() -> None:
    g = torch.Generator().manual_seed(0)
    la, lb = torch.randn(3, 2, 4, 4, 2, generator=g), torch.randn(3, 2, 4, 4, 2, generator=g)
    fa, fb = torch.randn(3, 4, 4, 4, 2, generator=g), torch.randn(3, 4, 4, 4, 2, generator=g)
    y = torch.randint(0, 2, (1, 4, 4, 2), generator=g)
    loss = DualNetLoss(LossConfig(q_start=40, q_end=40), ModuleSwitches(), 2, 100)
    total, terms = loss((la, fa), (lb, fb), y, 9)
    assert terms["w_u"] == 0.0 and terms["lambda_c"] == 0.0 and terms["cps_a"] > 0
    assert float(total) == pytest.approx(terms["supervised"], rel=1e-6)
    after = loss((la, fa), (lb, fb), y, 10)[1]
    assert after["w_u"] == 1.0 and after["total"] > after["supervised"]


# ----------------------------------------------------------------------------- teacher choice


def test_winner_teacher_only_the_student_receives_cps_contrast_and_cosine() -> None:
    g = torch.Generator().manual_seed(5)
    y = torch.randint(0, 2, (2, 4, 4, 2), generator=g)
    good = torch.nn.functional.one_hot(y, 2).movedim(-1, 1).float() * 4.0  # net A fits the labels
    la = torch.cat([good, torch.randn(2, 2, 4, 4, 2, generator=g)]).requires_grad_(True)
    lb = torch.randn(4, 2, 4, 4, 2, generator=g).requires_grad_(True)
    fa = torch.randn(4, 4, 4, 4, 2, generator=g).requires_grad_(True)
    fb = torch.randn(4, 4, 4, 4, 2, generator=g).requires_grad_(True)
    cfg = LossConfig(teacher="winner", unlabeled_warmup=0.0, q_start=40, q_end=40)
    mods = ModuleSwitches(supervised_cr=False, entropy_filter=False)
    total, terms = DualNetLoss(cfg, mods, 2, 10)((la, fa), (lb, fb), y, 5)
    assert terms["sup_dice_a"] < terms["sup_dice_b"] and terms["teacher"] == 0.0
    assert {"cps_b", "kl_b", "contrast_b", "cosine"} <= set(terms)
    assert not {"cps_a", "kl_a", "contrast_a"} & set(terms)
    total.backward()
    assert la.grad is not None and lb.grad is not None and fb.grad is not None
    assert float(la.grad[2:].abs().sum()) == 0.0  # the teacher's unlabeled outputs are targets only
    assert fa.grad is None or float(fa.grad.abs().sum()) == 0.0
    assert float(lb.grad[2:].abs().sum()) > 0 and float(fb.grad[2:].abs().sum()) > 0
    swapped = DualNetLoss(cfg, mods, 2, 10)((lb, fb), (la, fa), y, 5)[1]
    assert swapped["teacher"] == 1.0 and "cps_a" in swapped and "cps_b" not in swapped
    sym = DualNetLoss(LossConfig(unlabeled_warmup=0.0, q_start=40, q_end=40), mods, 2, 10)(
        (la, fa), (lb, fb), y, 5)[1]
    assert "teacher" not in sym and {"cps_a", "cps_b", "contrast_a", "contrast_b"} <= set(sym)
    with pytest.raises(ValueError, match="teacher"):
        LossConfig(teacher="best")
