"""Tests for models/inference: sliding window (vs MONAI), Predictor geometry, entropy, progress, AMP."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data.utils import compute_importance_map
from monai.inferers import sliding_window_inference
from torch import nn

from models.data.transforms import preprocess
from models.inference.fuse import fold_batchnorm
from models.inference.onednn import OneDNNConv, OneDNNNet, onednn_available, onednn_graph
from models.inference.predictor import Predictor, normalized_entropy
from models.inference.sliding import (
    ImportanceMapCache,
    gaussian_importance_map,
    sliding_window_dual,
    window_starts,
)
from models.networks import build_network
from models.networks.blocks import ConvStage
from models.package import ModelCard, ModelPackage, load_package, save_package
from models.runtime import resolve_amp
from tests.models.test_package import _one_thread, card_dict, make_card, make_nets  # noqa: F401

PATCH = (16, 16, 16)


class IntensityNet(nn.Module):
    """Pointwise stand-in: class-1 logit = scale * (x - threshold), class-0 logit = 0."""

    def __init__(self, threshold: float = 0.5, scale: float = 20.0, width: int = 4) -> None:
        super().__init__()
        self.threshold, self.scale, self.width = threshold, scale, width
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit = self.scale * (x[:, :1] - self.threshold)
        return torch.cat([torch.zeros_like(logit), logit], 1), x[:, :1].repeat(1, self.width, 1, 1, 1)


def real_package(tmp_path: Path, num_classes: int = 2, **card_over: object) -> ModelPackage:
    card = ModelCard.from_dict(card_dict(num_classes=num_classes, **card_over))
    net_a, net_b = make_nets(card, seed=1)
    return load_package(save_package(tmp_path / "pkg", net_a, net_b, card), "cpu")


def standin_package(threshold_b: float = 0.5, spacing: tuple[float, ...] = (1.0, 1.0, 1.0)) -> ModelPackage:
    window = {"mode": "ct_window", "lower": 0.0, "upper": 1.0}
    pre = {"spacing": list(spacing), "orientation": "RAS", "intensity": window}
    card = make_card(preprocessing=pre, patch=PATCH)
    return ModelPackage(card, IntensityNet(0.5), IntensityNet(threshold_b), Path("standin"))


def oblique_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    c, s = math.cos(0.3), math.sin(0.3)
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]) @ np.array([[0, -1, 0], [0, 0, 1], [-1, 0, 0]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing)
    aff[:3, 3] = [12.0, -40.0, 7.5]
    return aff


# ------------------------------------------------------------------------------------------ sliding window
def test_importance_map_matches_monai_and_is_cached() -> None:
    for patch in [(16, 16, 16), (7, 12, 5)]:
        ours = gaussian_importance_map(patch)
        ref = compute_importance_map(patch, mode="gaussian", sigma_scale=0.125, device="cpu")
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    cache = ImportanceMapCache()
    first = cache.get(PATCH, "cpu")
    assert cache.get(PATCH, torch.device("cpu")) is first
    assert cache.get((16, 16, 32), "cpu") is not first and len(cache) == 2


def test_window_starts_cover_volume() -> None:
    assert window_starts((40, 16, 19), PATCH, 0.5) == [(x, 0, z) for x in (0, 8, 16, 24) for z in (0, 3)]
    with pytest.raises(ValueError):
        window_starts((10, 16, 16), PATCH, 0.5)
    with pytest.raises(ValueError):
        window_starts((16, 16, 16), PATCH, 1.0)


@pytest.mark.parametrize(
    ("shape", "patch", "overlap", "batch_size", "num_classes"),
    [
        ((35, 21, 19), PATCH, 0.5, 2, 2),  # non-divisible sizes, last windows shifted back
        ((10, 30, 16), PATCH, 0.5, 3, 2),  # smaller than the patch along x: padded, cropped back
        ((23, 9, 33), PATCH, 0.25, 1, 3),  # two axes padded, other overlap, 3 classes
        ((16, 16, 16), PATCH, 0.5, 2, 2),  # exactly one window
        ((40, 18, 20), (32, 16, 16), 0.3, 4, 2),  # non-cubic patch
    ],
)
def test_sliding_window_matches_monai_per_net(
    shape: tuple[int, int, int],
    patch: tuple[int, int, int],
    overlap: float,
    batch_size: int,
    num_classes: int,
) -> None:
    """The correctness baseline: each net's blended softmax equals MONAI's gaussian sliding window."""
    torch.manual_seed(0)
    nets = (
        build_network("resnet_vnet", 1, num_classes, 4).eval(),
        build_network("vnet", 1, num_classes, 4).eval(),
    )
    image = torch.randn(1, *shape)
    with torch.inference_mode():
        ours = sliding_window_dual(image, nets, patch, overlap=overlap, batch_size=batch_size)
        mean = sliding_window_dual(image, nets, patch, overlap=overlap, batch_size=batch_size, combine="mean")
        assert ours.shape == (2, num_classes, *shape)
        for n, net in enumerate(nets):
            ref = sliding_window_inference(
                image[None],
                patch,
                batch_size,
                lambda x, net=net: torch.softmax(net(x)[0], 1),
                overlap=overlap,
                mode="gaussian",
            )
            torch.testing.assert_close(ours[n], ref[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(mean, ours.mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.sum(1), torch.ones(2, *shape), rtol=0, atol=1e-5)


def test_sliding_window_progress_and_validation(tmp_path: Path) -> None:
    seen: list[float] = []
    net = IntensityNet()
    image = torch.rand(1, 30, 20, 17)
    out = sliding_window_dual(image, [net], PATCH, progress=seen.append)
    n_windows = len(window_starts((30, 20, 17), PATCH, 0.5))
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) == math.ceil(n_windows / 2)
    # a pointwise net is unaffected by blending: the blend returns its own softmax everywhere
    torch.testing.assert_close(out[0, 1], torch.sigmoid(20 * (image[0] - 0.5)), rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        sliding_window_dual(torch.rand(30, 20, 17), [net], PATCH)
    with pytest.raises(ValueError):
        sliding_window_dual(torch.rand(1, 30, 20, 17), [net], PATCH, combine="max")
    with pytest.raises(ValueError, match="classes"):
        sliding_window_dual(torch.rand(1, 30, 20, 17), [net], PATCH, num_classes=3)


# --------------------------------------------------------------------------------------------- predictor
def test_predictor_matches_monai_mean_on_identity_geometry(tmp_path: Path) -> None:
    pkg = real_package(tmp_path)
    rng = np.random.default_rng(0)
    vol = rng.normal(100, 20, size=(27, 20, 18)).astype(np.float32)
    aff = np.eye(4)
    pred = Predictor(pkg, "cpu", overlap=0.5, batch_size=2).predict(vol, aff)
    x, _ = preprocess(vol, aff, pkg.card.preprocessing)
    with torch.inference_mode():
        probs = [
            sliding_window_inference(
                torch.from_numpy(x)[None],
                PATCH,
                2,
                lambda t, net=net: torch.softmax(net(t)[0], 1),
                overlap=0.5,
                mode="gaussian",
            )[0]
            for net in (pkg.net_a, pkg.net_b)
        ]
    mean = (probs[0] + probs[1]) / 2
    np.testing.assert_allclose(pred.entropy, normalized_entropy(mean).numpy(), atol=1e-5)
    margin = (mean[1] - mean[0]).abs().numpy() > 1e-4
    np.testing.assert_array_equal(pred.mask[margin], mean.argmax(0).numpy()[margin])
    disagree = (probs[0].argmax(0) != probs[1].argmax(0)).numpy()
    np.testing.assert_array_equal(pred.disagreement, disagree.astype(np.float32))


def test_predictor_oblique_anisotropic_geometry(tmp_path: Path) -> None:
    """A sphere in patient space is found at the right place on an oblique, permuted, flipped grid."""
    aff = oblique_affine((0.9, 1.3, 2.1))
    shape = (30, 24, 14)
    ijk = np.stack(np.meshgrid(*(np.arange(s) for s in shape), indexing="ij"), -1).astype(float)
    xyz = ijk @ aff[:3, :3].T + aff[:3, 3]
    center = np.array([14.5, 11.5, 6.5]) @ aff[:3, :3].T + aff[:3, 3]
    sphere = np.linalg.norm(xyz - center, axis=-1) < 10.0
    pkg = standin_package(spacing=(1.5, 1.5, 1.5))
    seen: list[float] = []
    pred = Predictor(pkg, "cpu").predict(sphere.astype(np.int16), aff, progress=seen.append)
    assert pred.mask.shape == shape and pred.mask.dtype == np.uint8
    assert pred.entropy.shape == shape and pred.entropy.dtype == np.float32
    assert pred.disagreement is not None and pred.disagreement.shape == shape
    np.testing.assert_array_equal(pred.affine, aff)
    dice = 2 * (pred.mask.astype(bool) & sphere).sum() / (pred.mask.astype(bool).sum() + sphere.sum())
    assert dice > 0.9
    assert pred.entropy.min() >= 0.0 and pred.entropy.max() <= 1.0
    # uncertainty sits on the sphere's surface, not in its centre or far away
    assert pred.entropy[14, 11, 6] < 0.01 and pred.entropy[0, 0, 0] < 0.01 and pred.entropy.max() > 0.5
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen) and len(seen) > 3
    assert set(pred.timings) >= {"preprocess", "inference", "postprocess", "regions"}
    assert all(v >= 0 for v in pred.timings.values())


def test_predictor_real_nets_oblique_input_shapes(tmp_path: Path) -> None:
    pre = {"spacing": [1.2, 1.2, 2.0], "orientation": "RAS", "intensity": {"mode": "clip_zscore"}}
    pkg = real_package(tmp_path, preprocessing=pre)
    aff = oblique_affine((0.8, 1.1, 3.0))
    vol = np.random.default_rng(0).normal(size=(21, 19, 7)).astype(np.float32)  # smaller than the patch
    predictor = Predictor(pkg, torch.device("cpu"), batch_size=3)
    pred = predictor.predict(vol, aff)
    assert pred.mask.shape == vol.shape and pred.entropy.shape == vol.shape
    assert set(np.unique(pred.mask)) <= {0, 1}
    assert np.all((pred.entropy >= 0) & (pred.entropy <= 1))
    assert set(np.unique(pred.disagreement)) <= {0.0, 1.0}
    assert predictor.importance_map() is predictor.importance_map()
    assert len(predictor.importance_maps) == 1
    cached = predictor.importance_map()
    predictor.predict(vol, aff)
    assert predictor.importance_map() is cached and len(predictor.importance_maps) == 1


@pytest.mark.parametrize("num_classes", [2, 3])
def test_uniform_nets_give_maximal_entropy(tmp_path: Path, num_classes: int) -> None:
    pkg = real_package(tmp_path, num_classes=num_classes)
    for net in (pkg.net_a, pkg.net_b):
        nn.init.zeros_(net.head.weight)
        nn.init.zeros_(net.head.bias)
    vol = np.random.default_rng(0).normal(size=(20, 17, 16)).astype(np.float32)
    pred = Predictor(pkg, "cpu", min_region_voxels=1).predict(vol, np.diag([0.5, 0.5, 2.0, 1.0]))
    np.testing.assert_allclose(pred.entropy, 1.0, atol=1e-6)
    assert np.all(pred.mask == 0) and np.all(pred.disagreement == 0)
    (region,) = pred.regions
    assert region["voxel_count"] == vol.size and region["mean_entropy"] == pytest.approx(1.0, abs=1e-6)
    assert region["volume_mm3"] == pytest.approx(vol.size * 0.5)
    assert region["bbox_voxel"] == {"min": [0, 0, 0], "max": [19, 16, 15]} and region["labels"] == [0]


def test_disagreement_map_and_mean_only_mode() -> None:
    """Net A says 1 above 0.5, net B above 0.3: they disagree exactly on 0.3 < v < 0.5."""
    pkg = standin_package(threshold_b=0.3)
    ramp = (np.arange(40) + 0.5) / 40  # avoids exact thresholds
    vol = np.broadcast_to(ramp[:, None, None], (40, 18, 17)).astype(np.float32)
    pred = Predictor(pkg, "cpu").predict(vol, np.eye(4))
    expected = ((vol > 0.3) & (vol < 0.5)).astype(np.float32)
    np.testing.assert_array_equal(pred.disagreement, expected)
    p1 = (
        torch.sigmoid(20 * (torch.from_numpy(vol) - 0.5)) + torch.sigmoid(20 * (torch.from_numpy(vol) - 0.3))
    ) / 2
    ref_entropy = normalized_entropy(torch.stack([1 - p1, p1])).numpy()
    np.testing.assert_allclose(pred.entropy, ref_entropy, atol=1e-5)
    np.testing.assert_array_equal(pred.mask, (p1 > 0.5).numpy().astype(np.uint8))

    mean_only = Predictor(pkg, "cpu", disagreement=False).predict(vol, np.eye(4))
    assert mean_only.disagreement is None
    np.testing.assert_array_equal(mean_only.mask, pred.mask)
    np.testing.assert_allclose(mean_only.entropy, pred.entropy, atol=1e-6)
    assert [r["voxel_count"] for r in mean_only.regions] == [r["voxel_count"] for r in pred.regions]


def test_postprocess_in_slabs_gives_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = standin_package(threshold_b=0.3, spacing=(1.3, 0.9, 1.1))
    ramp = (np.arange(33) + 0.5) / 33
    vol = (ramp[:, None, None] * np.linspace(0.5, 1.0, 19)[None, :, None] * np.ones(17)).astype(np.float32)
    aff = oblique_affine((1.0, 1.2, 0.8))
    whole = Predictor(pkg, "cpu").predict(vol, aff)
    monkeypatch.setattr("models.inference.predictor._SLAB_VOXELS", 50)  # many slabs of one or two rows
    slabs = Predictor(pkg, "cpu").predict(vol, aff)
    np.testing.assert_array_equal(slabs.mask, whole.mask)
    np.testing.assert_array_equal(slabs.entropy, whole.entropy)
    np.testing.assert_array_equal(slabs.disagreement, whole.disagreement)
    assert whole.disagreement is not None and 0 < whole.disagreement.mean() < 1


def test_amp_settings(tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    assert resolve_amp(False, cpu) is None and resolve_amp("fp32", cpu) is None
    assert resolve_amp("bf16", cpu) is torch.bfloat16 and resolve_amp("fp16", cpu) is torch.float16
    assert resolve_amp(True, cpu) in (None, torch.bfloat16)
    with pytest.raises(ValueError):
        resolve_amp("int8", cpu)
    pkg = real_package(tmp_path)
    vol = np.random.default_rng(0).normal(size=(20, 18, 16)).astype(np.float32)
    fp32 = Predictor(pkg, "cpu").predict(vol, np.eye(4))
    bf16 = Predictor(pkg, "cpu", amp="bf16").predict(vol, np.eye(4))
    assert bf16.entropy.dtype == np.float32 and np.all((bf16.entropy >= 0) & (bf16.entropy <= 1))
    assert (bf16.mask == fp32.mask).mean() > 0.9
    assert np.abs(bf16.entropy - fp32.entropy).mean() < 0.05


def test_predictor_rejects_bad_settings_and_inputs(tmp_path: Path) -> None:
    pkg = standin_package()
    with pytest.raises(ValueError):
        Predictor(pkg, "cpu", overlap=1.0)
    with pytest.raises(ValueError):
        Predictor(pkg, "cpu", batch_size=0)
    with pytest.raises(ValueError):
        Predictor(pkg, "cpu").predict(np.zeros((3, 16, 16, 16)), np.eye(4))  # 3 channels, card says 1


def test_folded_batchnorm_matches_the_original_networks() -> None:
    import torch

    from models.inference.fuse import fold_batchnorm
    from models.networks import build_network

    torch.manual_seed(0)
    for name in ("vnet", "resnet_vnet"):
        net = build_network(name, in_channels=1, num_classes=3, width=4).eval()
        for m in net.modules():  # non-trivial running statistics and affine parameters
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)
        fused, pairs = fold_batchnorm(net)
        assert pairs > 10
        assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in fused.modules())
        assert any(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules())  # original untouched
        x = torch.randn(2, 1, 32, 32, 16)
        with torch.inference_mode():
            (la, fa), (lb, fb) = net(x), fused(x)
        torch.testing.assert_close(lb, la, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fb, fa, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------ oneDNN graph
needs_onednn = pytest.mark.skipif(not onednn_available("cpu"), reason="torch build without the oneDNN ops")


def _random_bn(net: nn.Module) -> nn.Module:
    for m in net.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


@needs_onednn
@pytest.mark.parametrize(
    ("name", "in_channels", "num_classes", "residual"),
    [
        ("vnet", 1, 2, True),
        ("resnet_vnet", 1, 3, True),
        ("vnet", 4, 2, True),  # stage 1 residual: its input is the caller's tensor, never overwritten
        ("vnet", 1, 2, False),
        ("resnet_vnet", 2, 2, False),
    ],
)
def test_onednn_graph_matches_the_plain_network(
    name: str, in_channels: int, num_classes: int, residual: bool
) -> None:
    torch.manual_seed(0)
    net = _random_bn(build_network(name, in_channels, num_classes, width=4, residual=residual))
    graph = onednn_graph(fold_batchnorm(net)[0])
    assert not any(isinstance(m, nn.Conv3d | nn.ConvTranspose3d | nn.BatchNorm3d) for m in graph.modules())
    convs = [m for m in graph.modules() if isinstance(m, OneDNNConv)]
    assert sum(c.post == "relu" for c in convs) > len(convs) // 2  # ReLUs went into the convolutions
    if residual:
        assert any(getattr(m, "inplace", False) for m in graph.modules())  # in-place residual sums used
    x2 = torch.randn(2, in_channels, 32, 32, 16)
    x1 = torch.randn(1, in_channels, 48, 32, 32)
    with torch.inference_mode():
        for x in (x2, x1, x2):  # weights are prepacked for the first shape; other shapes stay right
            before = x.clone()
            (logits, feats), (ref_logits, ref_feats) = graph(x), net(x)
            torch.testing.assert_close(x, before, rtol=0, atol=0)  # the input is never written
            assert logits.is_contiguous() and logits.shape == ref_logits.shape
            torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(feats, ref_feats, rtol=1e-4, atol=1e-4)
    assert any(isinstance(m, nn.BatchNorm3d) for m in net.modules())  # the original is untouched
    with pytest.raises(ValueError, match="BatchNorm"):
        onednn_graph(net)


@needs_onednn
def test_onednn_residual_sums_write_only_into_temporaries() -> None:
    torch.manual_seed(0)
    # A residual stage of one convolution has body(x) == x: the sum must not be written into x.
    stage = _random_bn(ConvStage(1, 4, 4, residual=True))
    graph = onednn_graph(fold_batchnorm(stage)[0]).net
    graph.inplace = True  # as inside the decoder, where the stage owns its input
    x = torch.randn(1, 4, 8, 8, 8).contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        torch.testing.assert_close(graph(x.clone()), stage(x), rtol=1e-4, atol=1e-5)
    # In a chain the first stage reads the caller's tensor (out-of-place sum), the second one reads
    # the first one's output (in-place sum).
    chain = _random_bn(nn.Sequential(ConvStage(2, 4, 4), ConvStage(2, 4, 4)))
    graph = onednn_graph(fold_batchnorm(chain)[0])
    assert [m.inplace for m in graph.net] == [False, True]
    before = x.clone()
    with torch.inference_mode():
        torch.testing.assert_close(graph(x), chain(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x, before, rtol=0, atol=0)


def test_predictor_onednn_setting(tmp_path: Path) -> None:
    pkg = real_package(tmp_path)
    assert Predictor(pkg, "cpu").onednn is onednn_available("cpu")  # default: on where it applies
    assert Predictor(pkg, "cpu", onednn=False).onednn is False
    assert Predictor(pkg, "cpu", amp="bf16").onednn is False  # autocast keeps the plain modules
    assert Predictor(pkg, "cpu", fold_bn=False).onednn is False
    with pytest.raises(ValueError, match="onednn"):
        Predictor(pkg, "cpu", amp="bf16", onednn=True)


@needs_onednn
@pytest.mark.parametrize("batch_size", [1, 3])
def test_predictor_onednn_agrees_with_plain_modules(tmp_path: Path, batch_size: int) -> None:
    pkg = real_package(tmp_path, num_classes=3)
    vol = np.random.default_rng(1).normal(100, 20, size=(37, 29, 21)).astype(np.float32)
    aff = oblique_affine((1.1, 0.9, 1.4))
    fast = Predictor(pkg, "cpu", batch_size=batch_size, onednn=True)
    plain = Predictor(pkg, "cpu", batch_size=batch_size, onednn=False, fold_bn=False)
    assert isinstance(fast.net_a, OneDNNNet) and isinstance(fast.net_b, OneDNNNet)
    image, _ = preprocess(vol, aff, pkg.card.preprocessing)
    p_fast, p_plain = fast.model_probabilities(image), plain.model_probabilities(image)
    torch.testing.assert_close(p_fast, p_plain, rtol=0, atol=1e-4)
    a, b = fast.predict(vol, aff), plain.predict(vol, aff)
    np.testing.assert_allclose(a.entropy, b.entropy, atol=1e-4)
    assert (a.mask == b.mask).mean() > 0.999 and (a.disagreement == b.disagreement).mean() > 0.999


@needs_onednn
def test_onednn_graph_keeps_what_it_cannot_convert() -> None:
    """A convolution oneDNN is not given (here: reflect padding) stays an ``nn.Conv3d``; still right."""
    torch.manual_seed(0)
    stage = _random_bn(ConvStage(2, 4, 4, residual=True))
    stage.body[3].padding_mode = "reflect"  # the last convolution of the residual stage
    graph = onednn_graph(fold_batchnorm(stage)[0])
    assert isinstance(graph.net, ConvStage)  # not fused: converted like an unknown module
    kinds = [type(m).__name__ for m in graph.net.body]
    assert kinds == ["OneDNNConv", "Conv3d"]
    x = torch.randn(2, 4, 8, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(graph(x), stage(x), rtol=1e-4, atol=1e-5)


def test_first_argmax_matches_torch_argmax_including_ties() -> None:
    from models.inference.predictor import first_argmax

    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(4, 9, 7, 5, generator=g), dim=0)
    probs[:, 0, 0, 0] = torch.tensor([0.25, 0.25, 0.25, 0.25])  # four-way tie -> class 0
    probs[:, 1, 0, 0] = torch.tensor([0.1, 0.4, 0.4, 0.1])  # tie of 1 and 2 -> class 1
    out = first_argmax(probs)
    assert out.dtype == torch.uint8
    assert torch.equal(out.long(), probs.argmax(dim=0))
    assert int(out[0, 0, 0]) == 0 and int(out[1, 0, 0]) == 1


def test_bf16_autocast_agrees_with_fp32_on_the_starter_model() -> None:
    """The shipped starter model on a phantom: bf16 autocast labels >= 99.9 % equal to float32's."""
    from models.data.phantoms import make_phantom
    from models.package import load_package

    starter = Path(__file__).resolve().parents[2] / "models" / "assets" / "starter"
    pkg = load_package(starter, torch.device("cpu"))
    ph = make_phantom(11, shape=(96, 96, 64))
    fp32 = Predictor(pkg, "cpu").predict(ph.image, ph.affine)
    bf16 = Predictor(pkg, "cpu", amp="bf16").predict(ph.image, ph.affine)
    assert (fp32.mask == 1).sum() > 1000  # the model finds the atrium, so the agreement is not all background
    assert (bf16.mask == fp32.mask).mean() >= 0.999
    assert np.abs(bf16.entropy - fp32.entropy).max() < 0.05
