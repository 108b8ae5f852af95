"""Network registry: build Net A / Net B by name and count parameters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from models.networks.resnet_vnet import ResNetVNet
from models.networks.vnet import VNet

NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "vnet": VNet,  # Net B
    "resnet_vnet": ResNetVNet,  # Net A
}


def available_networks() -> list[str]:
    """Sorted list of valid network names."""
    return sorted(NETWORKS)


def build_network(
    name: str, in_channels: int = 1, num_classes: int = 2, width: int = 16, **kwargs: Any
) -> nn.Module:
    """Build a segmentation network by name.

    The returned module maps ``x (B, in_channels, X, Y, Z)`` (X, Y, Z divisible by 16) to
    ``(logits (B, num_classes, X, Y, Z), features (B, width, X, Y, Z))``. ``kwargs`` go to the
    constructor (``dropout``, ``residual``; ``blocks`` for ``resnet_vnet``).

    Raises:
        ValueError: unknown ``name`` (the message lists the valid names) or invalid sizes.
    """
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; valid names: {', '.join(available_networks())}")
    if width < 1 or in_channels < 1:
        raise ValueError(f"width and in_channels must be >= 1, got {width}, {in_channels}")
    return NETWORKS[name](in_channels=in_channels, num_classes=num_classes, width=width, **kwargs)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of ``module``; only ``requires_grad`` ones if ``trainable_only``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
