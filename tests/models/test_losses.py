"""Loss terms: hand-computed values on tiny tensors, gradient routing, entropy guard, masking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.losses import (
    DualNetLoss,
    LossConfig,
    ModuleSwitches,
    check_probabilities,
    class_prototypes,
    confident_disagreement_loss,
    confident_disagreement_mask,
    cosine_consistency,
    cps_kl_loss,
    cross_entropy,
    entropy,
    entropy_filtered_loss,
    joint_pseudo_label,
    linear_schedule,
    percentile,
    prototype_contrastive_loss,
    reliable_mask,
    sigmoid_rampup,
    soft_dice_loss,
)


def probs_tensor(rows: list[list[float]]) -> torch.Tensor:
    """Voxel rows [p_0, ..., p_K-1] -> (1, K, V) tensor."""
    return torch.tensor(rows, dtype=torch.float32).t().unsqueeze(0).contiguous()


def grad_of(t: torch.Tensor) -> torch.Tensor:
    assert t.grad is not None
    return t.grad


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


# ----------------------------------------------------------------------------- ramps


def test_sigmoid_rampup_values() -> None:
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(100, 100) == 1.0
    assert sigmoid_rampup(500, 100) == 1.0
    assert sigmoid_rampup(3, 0) == 1.0
    assert linear_schedule(5, 10, 20.0, 40.0) == pytest.approx(30.0)
    assert linear_schedule(50, 10, 20.0, 40.0) == pytest.approx(40.0)


# ----------------------------------------------------------------------------- supervised


def test_cross_entropy_hand_value() -> None:
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 3.0]])  # (K=2, V=3)
    target = np.array([0, 1, 0])
    logp = logits - np.log(np.exp(logits).sum(axis=0))
    expected = -np.mean([logp[0, 0], logp[1, 1], logp[0, 2]])
    got = cross_entropy(torch.tensor(logits).float()[None], torch.tensor(target)[None])
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_soft_dice_hand_value_all_classes() -> None:
    p = np.array([[0.9, 0.2, 0.6, 0.1], [0.1, 0.8, 0.4, 0.9]])  # (K=2, V=4)
    g = np.array([0, 1, 1, 1])
    eps = 1e-5
    dice = []
    for c in range(2):
        onehot = (g == c).astype(float)
        dice.append((2 * (p[c] * onehot).sum() + eps) / (p[c].sum() + onehot.sum() + eps))
    expected = 1 - np.mean(dice)  # background is included (loss.dice_background)
    got = soft_dice_loss(torch.tensor(p).float()[None], torch.tensor(g)[None], eps, include_background=True)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    fg_only = soft_dice_loss(torch.tensor(p).float()[None], torch.tensor(g)[None], eps=eps)
    assert float(fg_only) == pytest.approx(1 - dice[1], rel=1e-5)
    # A perfect one-hot prediction gives 0.
    perfect = torch.nn.functional.one_hot(torch.tensor(g), 2).t().float()[None]
    assert float(soft_dice_loss(perfect, torch.tensor(g)[None])) == pytest.approx(0.0, abs=1e-6)


# Voxels: v0 both confident & agree | v1 only A confident, disagree | v2 only B confident, disagree
#         v3 neither confident, disagree | v4 both confident, disagree | v5 only A confident, agree
PA = [[0.9, 0.1], [0.9, 0.1], [0.55, 0.45], [0.58, 0.42], [0.9, 0.1], [0.7, 0.3]]
PB = [[0.8, 0.2], [0.45, 0.55], [0.2, 0.8], [0.42, 0.58], [0.1, 0.9], [0.59, 0.41]]


def test_confident_disagreement_masks_and_values() -> None:
    pa, pb = probs_tensor(PA), probs_tensor(PB)
    # A learns where only B is confident and they disagree: v2; B learns at v1.
    assert confident_disagreement_mask(pa, pb, 0.6).squeeze(0).tolist() == [0, 0, 1, 0, 0, 0]
    assert confident_disagreement_mask(pb, pa, 0.6).squeeze(0).tolist() == [0, 1, 0, 0, 0, 0]
    loss_a = confident_disagreement_loss(pa, pb, 0.6)
    loss_b = confident_disagreement_loss(pb, pa, 0.6)
    # Squared error on the masked voxel, divided by all 6 voxels of the batch.
    assert float(loss_a) == pytest.approx(((0.55 - 0.2) ** 2 + (0.45 - 0.8) ** 2) / 6, rel=1e-5)
    assert float(loss_b) == pytest.approx(((0.45 - 0.9) ** 2 + (0.55 - 0.1) ** 2) / 6, rel=1e-5)


def test_confident_disagreement_gradient_direction() -> None:
    pa = probs_tensor(PA).requires_grad_(True)
    pb = probs_tensor(PB).requires_grad_(True)
    confident_disagreement_loss(pa, pb, 0.6).backward()
    assert pb.grad is None  # the confident other net is a detached target
    assert pa.grad is not None
    # Only voxel v2 is pulled: d/dp (p - t)^2 / N = 2 (p - t) / N with N = 6 voxels.
    expected = np.zeros((2, 6))
    expected[:, 2] = [2 * (0.55 - 0.2) / 6, 2 * (0.45 - 0.8) / 6]
    assert np.allclose(pa.grad[0].numpy(), expected, atol=1e-6)


def test_confident_disagreement_empty_mask_is_zero_with_grad() -> None:
    p = probs_tensor([[0.9, 0.1], [0.2, 0.8]]).requires_grad_(True)
    loss = confident_disagreement_loss(p, p.detach().clone(), 0.6)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert p.grad is not None and float(p.grad.abs().sum()) == 0.0


# ----------------------------------------------------------------------------- cross


def test_cps_kl_hand_values_and_gradients() -> None:
    ls = np.array([[1.0, -0.5, 0.2], [0.0, 0.5, 0.3]])  # student logits (K=2, V=3)
    pt = np.array([[0.7, 0.4, 0.1], [0.3, 0.6, 0.9]])  # teacher probabilities
    ps = np_softmax(ls)
    d = (pt * (np.log(pt) - np.log(ps))).sum(axis=0)
    pseudo = pt.argmax(axis=0)
    ce = -np.log(ps[pseudo, np.arange(3)])
    expected_ce = np.mean(np.exp(-d) * ce)
    logits = torch.tensor(ls).float()[None].requires_grad_(True)
    teacher = torch.tensor(pt).float()[None].requires_grad_(True)
    wce, kl = cps_kl_loss(logits, teacher)
    assert wce.item() == pytest.approx(expected_ce, rel=1e-5)
    assert kl.item() == pytest.approx(d.mean(), rel=1e-5)
    # The regulariser alone keeps its gradient into the student ...
    (g_kl,) = torch.autograd.grad(kl, logits, retain_graph=True)
    assert float(g_kl.abs().sum()) > 0
    # ... the weighted CE's gradient treats exp(-D) as a constant ...
    (g_ce,) = torch.autograd.grad(wce, logits, retain_graph=True)
    onehot = np.eye(2)[pseudo].T
    expected_grad = np.exp(-d) * (ps - onehot) / 3.0
    assert np.allclose(g_ce[0].numpy(), expected_grad, atol=1e-6)
    # ... and nothing reaches the teacher.
    (wce + kl).backward()
    assert teacher.grad is None


def test_cosine_consistency_hand_value_both_directions() -> None:
    a = np.array([[0.9, 0.5], [0.1, 0.5]])
    b = np.array([[0.6, 0.5], [0.4, 0.5]])
    cos = (a * b).sum(0) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0))
    ta = torch.tensor(a).float()[None].requires_grad_(True)
    tb = torch.tensor(b).float()[None].requires_grad_(True)
    loss = cosine_consistency(ta, tb)
    assert loss.item() == pytest.approx(np.mean(1 - cos), rel=1e-5)
    loss.backward()
    assert ta.grad is not None and tb.grad is not None
    assert float(ta.grad.abs().sum()) > 0 and float(tb.grad.abs().sum()) > 0


# ----------------------------------------------------------------------------- entropy filter


def test_entropy_hand_value() -> None:
    p = np.array([[0.5, 0.9, 1.0], [0.5, 0.1, 0.0]])
    expected = [math.log(2), -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)), 0.0]
    got = entropy(torch.tensor(p).float()[None])
    assert np.allclose(got[0].numpy(), expected, atol=1e-6)


def test_entropy_rejects_logits() -> None:
    logits = torch.tensor([[[2.0, -1.0], [0.5, 3.0]]])  # (1, K=2, V=2): not a distribution
    with pytest.raises(ValueError, match="softmax"):
        entropy(logits)
    with pytest.raises(ValueError, match="negative"):
        check_probabilities(torch.tensor([[[1.5], [-0.5]]]))
    with pytest.raises(ValueError):
        reliable_mask(logits, 20.0)
    check_probabilities(torch.softmax(logits, dim=1))  # fine


@pytest.mark.parametrize("q", [0.0, 20.0, 37.5, 50.0, 100.0])
def test_percentile_matches_numpy(q: float) -> None:
    values = np.random.default_rng(1).random(101).astype(np.float32)
    expected = float(np.percentile(values, q))
    assert float(percentile(torch.tensor(values), q)) == pytest.approx(expected, rel=1e-6)


def test_percentile_masking_selects_lowest_entropy_voxels() -> None:
    # Ten voxels with decreasing confidence: entropy increases with the index.
    conf = np.linspace(0.99, 0.55, 10)
    prob = probs_tensor([[c, 1 - c] for c in conf])
    mask, thr = reliable_mask(prob, 20.0)
    # 20th percentile of 10 sorted values lies between the 2nd and 3rd: exactly two voxels are reliable.
    assert mask[0].tolist() == [True, True] + [False] * 8
    h = -(conf * np.log(conf) + (1 - conf) * np.log(1 - conf))
    assert float(thr) == pytest.approx(float(np.percentile(h, 20)), rel=1e-5)
    mask50, _ = reliable_mask(prob, 50.0)
    assert int(mask50.sum()) == 5 and bool(mask50[0, :5].all())


def test_classwise_percentile_masking_keeps_the_small_class() -> None:
    # Eight confident background voxels and four less certain foreground voxels.
    conf = [0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92] + [0.80, 0.70, 0.65, 0.60]
    prob = probs_tensor([[c, 1 - c] for c in conf[:8]] + [[1 - c, c] for c in conf[8:]])
    pseudo = prob.argmax(dim=1)
    glob, _ = reliable_mask(prob, 25.0)
    # Global 25th percentile of 12 entropies: only background voxels are reliable.
    assert glob[0].tolist() == [True, True, True] + [False] * 9
    mask, thr = reliable_mask(prob, 25.0, pseudo)
    # Class-wise: 25th percentile within each class -> two background and one foreground voxel.
    assert mask[0].tolist() == [True, True] + [False] * 6 + [True, False, False, False]
    h = [-(c * np.log(c) + (1 - c) * np.log(1 - c)) for c in conf]
    assert thr.tolist() == pytest.approx([np.percentile(h[:8], 25), np.percentile(h[8:], 25)], rel=1e-5)


def test_joint_pseudo_label_and_filtered_ce_hand_value() -> None:
    pa = np.array([[0.9, 0.3, 0.45, 0.2], [0.1, 0.7, 0.55, 0.8]])
    pb = np.array([[0.6, 0.8, 0.7, 0.1], [0.4, 0.2, 0.3, 0.9]])
    pseudo = joint_pseudo_label(torch.tensor(pa)[None], torch.tensor(pb)[None])
    assert pseudo[0].tolist() == [0, 0, 0, 1]
    logits = np.array([[1.0, 0.0, 2.0, -1.0], [0.0, 1.0, 0.0, 1.0]])
    reliable = torch.tensor([[True, False, True, True]])
    logp = logits - np.log(np.exp(logits).sum(axis=0))
    expected = -(logp[0, 0] + logp[0, 2] + logp[1, 3]) / 3
    t_logits = torch.tensor(logits).float()[None].requires_grad_(True)
    loss = entropy_filtered_loss(t_logits, pseudo, reliable)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert t_logits.grad is not None
    assert float(t_logits.grad[0, :, 1].abs().sum()) == 0.0  # unreliable voxel: no gradient
    assert float(t_logits.grad[0, :, 0].abs().sum()) > 0.0
    empty = entropy_filtered_loss(t_logits, pseudo, torch.zeros_like(reliable))
    assert empty.item() == 0.0 and empty.requires_grad


# ----------------------------------------------------------------------------- prototypes


def test_prototype_contrastive_hand_value() -> None:
    # Features (C=2) of 5 voxels; v0, v1 reliable class 0; v2 reliable class 1; v3, v4 uncertain.
    f = np.array([[1.0, 0.0], [2.0, 2.0], [0.0, 3.0], [1.0, 0.5], [-1.0, 2.0]])
    labels = torch.tensor([[0, 0, 1, 0, 1]])
    reliable = torch.tensor([[True, True, True, False, False]])
    fn = f / np.linalg.norm(f, axis=1, keepdims=True)
    p0 = fn[[0, 1]].mean(0)
    p1 = fn[2]
    protos, present = class_prototypes(torch.tensor(f.T).float()[None], labels, reliable, 3)
    assert present.tolist() == [True, True, False]
    assert np.allclose(protos[0].numpy(), p0, atol=1e-6) and np.allclose(protos[1].numpy(), p1, atol=1e-6)
    keys = np.stack([p0 / np.linalg.norm(p0), p1 / np.linalg.norm(p1)])
    tau = 0.5
    losses = []
    for v, k in [(3, 0), (4, 1)]:
        s = keys @ fn[v] / tau
        losses.append(-(s[k] - np.log(np.exp(s).sum())))
    feats = torch.tensor(f.T).float()[None].requires_grad_(True)
    loss = prototype_contrastive_loss(feats, labels, reliable, 3, temperature=tau)
    assert float(loss.detach()) == pytest.approx(np.mean(losses), rel=1e-5)
    loss.backward()
    assert feats.grad is not None
    grad_norm = feats.grad[0].abs().sum(0)
    assert float(grad_norm[:3].sum()) == 0.0  # reliable voxels only define the detached prototypes
    assert float(grad_norm[3]) > 0 and float(grad_norm[4]) > 0


def test_prototype_nothing_available_returns_connected_zero() -> None:
    feats = torch.randn(1, 3, 4, requires_grad=True)
    labels = torch.zeros(1, 4, dtype=torch.long)
    none = prototype_contrastive_loss(feats, labels, torch.zeros(1, 4, dtype=torch.bool), 2)
    every = prototype_contrastive_loss(feats, labels, torch.ones(1, 4, dtype=torch.bool), 2)
    for loss in (none, every):
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()


def test_prototype_sampling_cap_is_deterministic() -> None:
    f = torch.randn(1, 4, 200)
    labels = (torch.arange(200) % 2)[None]
    reliable = (torch.arange(200) < 20)[None]
    a = prototype_contrastive_loss(f, labels, reliable, 2, max_samples=16,
                                   generator=torch.Generator().manual_seed(3))
    b = prototype_contrastive_loss(f, labels, reliable, 2, max_samples=16,
                                   generator=torch.Generator().manual_seed(3))
    c = prototype_contrastive_loss(f, labels, reliable, 2, max_samples=16,
                                   generator=torch.Generator().manual_seed(4))
    full = prototype_contrastive_loss(f, labels, reliable, 2, max_samples=1000)
    assert a.item() == b.item()
    assert a.item() != c.item()
    assert a.item() != pytest.approx(full.item(), rel=1e-6)


# ----------------------------------------------------------------------------- combined


def _leaves(seed: int = 0, b_l: int = 2, b_u: int = 2, k: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (b_l + b_u, k, 4, 4, 2)
    return {
        "la": (torch.randn(shape, generator=g) * 2).requires_grad_(True),
        "fa": torch.randn(b_l + b_u, 5, 4, 4, 2, generator=g).requires_grad_(True),
        "lb": (torch.randn(shape, generator=g) * 2).requires_grad_(True),
        "fb": torch.randn(b_l + b_u, 5, 4, 4, 2, generator=g).requires_grad_(True),
        "y": torch.randint(0, k, (b_l, 4, 4, 2), generator=g),
    }


def _only(**on: bool) -> ModuleSwitches:
    base = {"supervised_cr": False, "cps_kl": False, "entropy_filter": False, "cosine": False,
            "prototype": False}
    base.update(on)
    return ModuleSwitches(**base)


@pytest.mark.parametrize(
    "module,keys",
    [
        ("cps_kl", ["cps_a", "cps_b", "kl_a", "kl_b"]),
        ("entropy_filter", ["ef_a", "ef_b"]),
        ("cosine", ["cosine"]),
        ("prototype", ["contrast_a", "contrast_b"]),
    ],
)
def test_each_unlabeled_term_carries_gradient(module: str, keys: list[str]) -> None:
    t = _leaves()
    loss_fn = DualNetLoss(LossConfig(q_start=40, q_end=40), _only(**{module: True}), 3, 10)
    total, terms = loss_fn((t["la"], t["fa"]), (t["lb"], t["fb"]), t["y"], iteration=5)
    for key in keys:
        assert key in terms and math.isfinite(terms[key]) and terms[key] != 0.0
    total.backward()
    for logits, feats in (("la", "fa"), ("lb", "fb")):
        grad_u_logits = grad_of(t[logits])[2:].abs().sum()
        g_feats = t[feats].grad
        grad_u_feats = 0.0 if g_feats is None else float(g_feats[2:].abs().sum())
        if module == "prototype":
            # Only features feed the contrast term; the unlabeled logits get nothing.
            assert grad_u_feats > 0 and float(grad_u_logits) == 0.0
        else:
            assert float(grad_u_logits) > 0 and grad_u_feats == 0.0


def test_pseudo_dice_is_the_soft_dice_against_the_other_nets_argmax() -> None:
    t = _leaves(seed=3)
    cfg = LossConfig(pseudo_dice=True)
    total, terms = DualNetLoss(cfg, _only(cps_kl=True), 3, 10)(
        (t["la"], t["fa"]), (t["lb"], t["fb"]), t["y"], iteration=5)
    pa, pb = torch.softmax(t["la"][2:], 1), torch.softmax(t["lb"][2:], 1)
    expected_a = soft_dice_loss(pa, pb.argmax(1))
    assert terms["cps_dice_a"] == pytest.approx(float(expected_a.detach()), rel=1e-6)
    plain = DualNetLoss(LossConfig(), _only(cps_kl=True), 3, 10)(
        (t["la"], t["fa"]), (t["lb"], t["fb"]), t["y"], iteration=5)[1]
    assert "cps_dice_a" not in plain
    assert terms["cce"] == pytest.approx(plain["cce"] + terms["cps_dice_a"] + terms["cps_dice_b"], rel=1e-5)
    total.backward()
    assert t["lb"].grad is not None and float(t["lb"].grad[2:].abs().sum()) > 0


def test_supervised_cr_term_changes_labeled_gradient() -> None:
    grads = []
    for cr in (False, True):
        t = _leaves(seed=2)
        cfg = LossConfig(cr_threshold=0.5)
        total, terms = DualNetLoss(cfg, _only(supervised_cr=cr), 3, 10)(
            (t["la"], t["fa"]), (t["lb"], t["fb"]), t["y"], iteration=0)
        assert ("sup_cr_a" in terms) == cr
        total.backward()
        assert float(grad_of(t["la"])[2:].abs().sum()) == 0.0  # supervised terms: labeled part only
        grads.append(grad_of(t["la"])[:2].clone())
    assert not torch.allclose(grads[0], grads[1])


def test_total_combines_terms_with_ramped_weights() -> None:
    t = _leaves(seed=4)
    cfg = LossConfig(w_u=2.0, w_u_rampup=10, lambda_c=0.5, lambda_c_rampup=20, q_start=10, q_end=30,
                     unlabeled_warmup=0.0)
    loss_fn = DualNetLoss(cfg, ModuleSwitches(), 3, 100)
    total, v = loss_fn((t["la"], t["fa"]), (t["lb"], t["fb"]), t["y"], iteration=5)
    assert v["w_u"] == pytest.approx(2.0 * math.exp(-5 * 0.25))
    assert v["lambda_c"] == pytest.approx(0.5 * math.exp(-5 * 0.75 ** 2))
    assert v["q"] == pytest.approx(11.0)
    sup = sum(v[f"sup_ce_{n}"] + v[f"sup_dice_{n}"] + 0.5 * v[f"sup_cr_{n}"] for n in "ab")
    cce = sum(v[f"cps_{n}"] + v[f"kl_{n}"] + v[f"ef_{n}"] for n in "ab") + v["cosine"]
    contrast = v["contrast_a"] + v["contrast_b"]
    assert v["supervised"] == pytest.approx(sup, rel=1e-5)
    assert v["cce"] == pytest.approx(cce, rel=1e-5)
    assert total.item() == pytest.approx(sup + v["w_u"] * cce + v["lambda_c"] * contrast, rel=1e-5)


def test_real_networks_receive_gradient_from_total() -> None:
    from models.networks import build_network

    torch.manual_seed(0)
    net_a = build_network("resnet_vnet", width=2)
    net_b = build_network("vnet", width=2)
    x = torch.randn(4, 1, 16, 16, 16)
    y = torch.randint(0, 2, (2, 16, 16, 16))
    total, _ = DualNetLoss(LossConfig(), ModuleSwitches(), 2, 10)(net_a(x), net_b(x), y, iteration=10)
    total.backward()
    for net in (net_a, net_b):
        grads = [grad_of(p) for p in net.parameters()]
        assert all(bool(torch.isfinite(g).all()) for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0


def test_no_unlabeled_part_gives_supervised_only() -> None:
    t = _leaves(b_u=0)
    total, terms = DualNetLoss(LossConfig(), ModuleSwitches(), 3, 10)(
        (t["la"], t["fa"]), (t["lb"], t["fb"]), t["y"], iteration=0)
    assert not any(k.startswith(("cps", "kl", "ef", "contrast", "cosine")) for k in terms)
    assert total.item() == pytest.approx(terms["supervised"], rel=1e-6)


def test_loss_config_validation() -> None:
    with pytest.raises(ValueError):
        LossConfig(q_start=120)
    with pytest.raises(ValueError):
        LossConfig(cr_threshold=0.0)
