"""Net A: a 3D ResNet-34 encoder with a V-Net style decoder.

Encoder (widths w, 2w, 4w, 8w, 16w; w = 16 at full size):
- stem: two 3³ conv-BN-ReLU layers at full resolution → ``(B, w, X, Y, Z)`` (level 1 skip);
- four ResNet-34 layers of 3, 4, 6, 3 ``BasicBlock``s; the first block of each halves the resolution
  (stride-2 3³ conv, 1³ stride-2 projection shortcut) → levels 2..5 with 2w, 4w, 8w, 16w channels.
The usual 2D stem (7×7 stride 2 + max-pool) is replaced by a full-resolution stem so that the encoder
yields the same 5-level pyramid as V-Net and the decoder ends at full resolution.

Decoder: the V-Net decoder (transposed-conv up-sampling, additive skips, 3-3-2-1 conv stages) shared
with Net B (``models.networks.blocks.VNetDecoder``), channel dropout on the bottleneck.
"""

from __future__ import annotations

import torch
from torch import nn

from models.networks.blocks import VNetDecoder, check_spatial, conv_bn_relu, init_weights


class BasicBlock3d(nn.Module):
    """ResNet BasicBlock in 3D: two 3³ convs + identity (or 1³ projection) shortcut.

    ``(B, Cin, X, Y, Z) -> (B, Cout, X/s, Y/s, Z/s)`` with ``s = stride``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm3d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, Cin, X, Y, Z) -> (B, Cout, X/s, Y/s, Z/s)``."""
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


def make_layer(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` BasicBlocks, the first one with ``stride`` and the channel change."""
    layers = [BasicBlock3d(in_channels, out_channels, stride)]
    layers += [BasicBlock3d(out_channels, out_channels) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNetVNet(nn.Module):
    """ResNet-34 encoder + V-Net decoder.

    ``forward(x (B, C, X, Y, Z)) -> (logits (B, K, X, Y, Z), features (B, width, X, Y, Z))``;
    X, Y, Z must be divisible by 16.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        width: int = 16,
        dropout: float = 0.5,
        residual: bool = True,
        blocks: tuple[int, int, int, int] = (3, 4, 6, 3),
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (binary is 2), got {num_classes}")
        w = width
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.width = width
        self.stem = nn.Sequential(*conv_bn_relu(in_channels, w), *conv_bn_relu(w, w))
        self.layer1 = make_layer(w, 2 * w, blocks[0], stride=2)
        self.layer2 = make_layer(2 * w, 4 * w, blocks[1], stride=2)
        self.layer3 = make_layer(4 * w, 8 * w, blocks[2], stride=2)
        self.layer4 = make_layer(8 * w, 16 * w, blocks[3], stride=2)
        self.decoder = VNetDecoder(w, residual=residual, dropout=dropout)
        self.head = nn.Conv3d(w, num_classes, kernel_size=1)
        self.apply(init_weights)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C, X, Y, Z) -> [s1 (B, w, X, ...), s2 (B, 2w, X/2, ...), ..., s5 (B, 16w, X/16, ...)]``."""
        s1 = self.stem(x)
        s2 = self.layer1(s1)
        s3 = self.layer2(s2)
        s4 = self.layer3(s3)
        s5 = self.layer4(s4)
        return [s1, s2, s3, s4, s5]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, X, Y, Z) -> (logits (B, K, X, Y, Z), features (B, width, X, Y, Z))``."""
        check_spatial(x)
        features = self.decoder(self.encode(x))
        return self.head(features), features


__all__ = ["BasicBlock3d", "ResNetVNet", "make_layer"]
