"""Shared 3D building blocks of the V-Net family used by both networks.

All blocks take and return tensors shaped ``(B, C, X, Y, Z)``.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, relu: bool = True) -> list[nn.Module]:
    """3×3×3 convolution (padding 1, no bias) + BatchNorm (+ ReLU): ``(B, Cin, *S) -> (B, Cout, *S)``."""
    layers: list[nn.Module] = [
        nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


class ConvStage(nn.Module):
    """``n_convs`` 3³ conv-BN-ReLU layers, optionally residual (V-Net stage).

    ``(B, Cin, X, Y, Z) -> (B, Cout, X, Y, Z)``. The residual connection (``out = relu(f(x) + x)``, the
    last conv's ReLU moved after the sum as in the SSL literature's ``ResidualConvBlock``) is applied
    only when ``Cin == Cout``; it adds no parameters.
    """

    def __init__(self, n_convs: int, in_channels: int, out_channels: int, residual: bool = True) -> None:
        super().__init__()
        if n_convs < 1:
            raise ValueError(f"n_convs must be >= 1, got {n_convs}")
        self.residual = residual and in_channels == out_channels
        layers: list[nn.Module] = []
        for i in range(n_convs):
            last = i == n_convs - 1
            layers += conv_bn_relu(in_channels if i == 0 else out_channels, out_channels,
                                   relu=not (last and self.residual))
        self.body = nn.Sequential(*layers)
        self.act = nn.ReLU(inplace=True) if self.residual else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, Cin, X, Y, Z) -> (B, Cout, X, Y, Z)``."""
        y = self.body(x)
        if self.residual:
            y = self.act(y + x)
        return y


class Down(nn.Module):
    """Strided 2³ convolution + BN + ReLU: ``(B, Cin, X, Y, Z) -> (B, Cout, X/2, Y/2, Z/2)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, kernel_size=2, stride=2, bias=False),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, Cin, X, Y, Z) -> (B, Cout, X/2, Y/2, Z/2)``."""
        return self.op(x)


class Up(nn.Module):
    """Transposed 2³ convolution (stride 2) + BN + ReLU: ``(B, Cin, X, Y, Z) -> (B, Cout, 2X, 2Y, 2Z)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2, bias=False),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, Cin, X, Y, Z) -> (B, Cout, 2X, 2Y, 2Z)``."""
        return self.op(x)


class VNetDecoder(nn.Module):
    """V-Net decoder over a 5-level pyramid with additive skip connections.

    Input: ``skips = [s1, s2, s3, s4, s5]`` with ``s_l`` shaped ``(B, w·2^(l-1), X/2^(l-1), ...)``
    (``s5`` is the bottleneck, ``(B, 16w, X/16, Y/16, Z/16)``). Output: the last decoder feature map
    ``(B, w, X, Y, Z)``. Stages have 3, 3, 2, 1 convolutions (deep to shallow) as in V-Net;
    ``dropout`` > 0 applies ``Dropout3d`` to the bottleneck before up-sampling (active in train mode only).
    """

    def __init__(self, width: int, residual: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        w = width
        self.up5 = Up(16 * w, 8 * w)
        self.stage6 = ConvStage(3, 8 * w, 8 * w, residual)
        self.up6 = Up(8 * w, 4 * w)
        self.stage7 = ConvStage(3, 4 * w, 4 * w, residual)
        self.up7 = Up(4 * w, 2 * w)
        self.stage8 = ConvStage(2, 2 * w, 2 * w, residual)
        self.up8 = Up(2 * w, w)
        self.stage9 = ConvStage(1, w, w, residual)
        # Channel-wise dropout on the bottleneck (the deepest layer), as in UA-MT / MC-Net's VNet.
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """``[s1..s5]`` (see class docstring) ``-> (B, w, X, Y, Z)``."""
        s1, s2, s3, s4, s5 = skips
        x = self.stage6(self.up5(self.dropout(s5)) + s4)
        x = self.stage7(self.up6(x) + s3)
        x = self.stage8(self.up7(x) + s2)
        return self.stage9(self.up8(x) + s1)


def check_spatial(x: torch.Tensor, factor: int = 16) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(B, C, X, Y, Z)`` with X, Y, Z divisible by ``factor``."""
    if x.dim() != 5:
        raise ValueError(f"expected a (B, C, X, Y, Z) tensor, got shape {tuple(x.shape)}")
    if any(s % factor for s in x.shape[2:]):
        raise ValueError(f"spatial size {tuple(x.shape[2:])} must be divisible by {factor}")


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal init for convolutions, (1, 0) for BatchNorm — applied with ``module.apply``."""
    if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm3d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
