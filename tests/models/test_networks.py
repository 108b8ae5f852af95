"""Networks: shapes, registry, parameter counts, gradients, dropout."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from models.networks import ResNetVNet, VNet, available_networks, build_network, count_parameters

NAMES = ["vnet", "resnet_vnet"]


@pytest.fixture(autouse=True)
def _few_threads() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(2, 1, 32, 32, 16), (1, 1, 16, 48, 32)])
def test_forward_shapes(name: str, shape: tuple[int, ...]) -> None:
    net = build_network(name, in_channels=1, num_classes=3, width=4)
    logits, features = net(torch.randn(*shape))
    assert logits.shape == (shape[0], 3, *shape[2:])
    assert features.shape == (shape[0], 4, *shape[2:])
    assert torch.isfinite(logits).all() and torch.isfinite(features).all()


@pytest.mark.parametrize("name", NAMES)
def test_multichannel_input_and_head_on_features(name: str) -> None:
    net = build_network(name, in_channels=2, num_classes=2, width=2).eval()
    assert isinstance(net, (VNet, ResNetVNet))
    logits, features = net(torch.randn(1, 2, 16, 16, 16))
    # The logits are the 1x1x1 head applied to the returned features.
    assert torch.allclose(net.head(features), logits, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_rejects_sizes_not_divisible_by_16(name: str) -> None:
    net = build_network(name, width=2)
    with pytest.raises(ValueError, match="divisible by 16"):
        net(torch.randn(1, 1, 24, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, C, X, Y, Z\)"):
        net(torch.randn(1, 16, 16, 16))


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError) as err:
        build_network("unet3d")
    assert "resnet_vnet" in str(err.value) and "vnet" in str(err.value)
    assert available_networks() == ["resnet_vnet", "vnet"]


def test_single_class_rejected() -> None:
    with pytest.raises(ValueError):
        build_network("vnet", num_classes=1)


def test_full_width_parameter_counts() -> None:
    vnet = build_network("vnet")
    resnet = build_network("resnet_vnet")
    assert isinstance(vnet, VNet) and isinstance(resnet, ResNetVNet)
    # The SSL literature's V-Net (16 filters, 3^3 convs) has ~9.45 M parameters.
    assert count_parameters(vnet) == 9_446_066
    assert count_parameters(resnet) == 17_931_346
    # Plain (non-residual) stages add/remove no parameter.
    assert count_parameters(build_network("vnet", residual=False)) == 9_446_066


def test_resnet_layout_is_resnet34() -> None:
    net = build_network("resnet_vnet", width=2).eval()
    assert isinstance(net, ResNetVNet)
    assert [len(layer) for layer in (net.layer1, net.layer2, net.layer3, net.layer4)] == [3, 4, 6, 3]
    x = torch.randn(1, 1, 16, 16, 16)
    widths = [s.shape[1] for s in net.encode(x)]
    sizes = [s.shape[2] for s in net.encode(x)]
    assert widths == [2, 4, 8, 16, 32]
    assert sizes == [16, 8, 4, 2, 1]


def test_count_parameters_matches_manual_sum() -> None:
    net = build_network("vnet", width=2)
    assert isinstance(net, VNet)
    manual = sum(p.numel() for p in net.parameters())
    assert count_parameters(net) == manual
    net.head.weight.requires_grad_(False)
    assert count_parameters(net, trainable_only=True) == manual - net.head.weight.numel()


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_gradient(name: str) -> None:
    net = build_network(name, width=2, num_classes=2)
    logits, features = net(torch.randn(2, 1, 16, 16, 16))
    (logits.square().mean() + features.mean()).backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", NAMES)
def test_dropout_active_only_in_train_mode(name: str) -> None:
    net = build_network(name, width=4, dropout=0.5)
    x = torch.randn(2, 1, 32, 32, 16)
    net.eval()
    with torch.no_grad():
        a, _ = net(x)
        b, _ = net(x)
    assert torch.equal(a, b)
    net.train()
    with torch.no_grad():
        c, _ = net(x)
        d, _ = net(x)
    assert not torch.allclose(c, d)
