"""Net B: the V-Net of the semi-supervised segmentation literature (UA-MT, MC-Net, MCF).

Five resolution levels with ``width`` (16 at full size) base filters doubling at each level
(w, 2w, 4w, 8w, 16w), 3³ convolutions, BatchNorm, strided 2³ convolutions for down-sampling and
transposed 2³ convolutions for up-sampling, additive skip connections, channel dropout on the bottleneck.
Stages have 1, 2, 3, 3, 3 (encoder) and 3, 3, 2, 1 (decoder) convolutions.

Differences from the UA-MT/MC-Net code, which are deliberate:
- stages with equal in/out channels are residual (``relu(f(x) + x)``, the original V-Net design); the
  SSL code defines this block but instantiates the plain one. ``residual=False`` gives the plain stages.
  Both have the same parameter count.
- convolutions have no bias (every one is followed by BatchNorm, so a bias is redundant).
- dropout is on the bottleneck only; the last decoder map is returned as ``features`` un-dropped.
"""

from __future__ import annotations

import torch
from torch import nn

from models.networks.blocks import ConvStage, Down, VNetDecoder, check_spatial, init_weights


class VNet(nn.Module):
    """V-Net: ``forward(x (B, C, X, Y, Z)) -> (logits (B, K, X, Y, Z), features (B, width, X, Y, Z))``.

    X, Y, Z must be divisible by 16 (four ×2 down-samplings).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        width: int = 16,
        dropout: float = 0.5,
        residual: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (binary is 2), got {num_classes}")
        w = width
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.width = width
        self.stage1 = ConvStage(1, in_channels, w, residual)
        self.down1 = Down(w, 2 * w)
        self.stage2 = ConvStage(2, 2 * w, 2 * w, residual)
        self.down2 = Down(2 * w, 4 * w)
        self.stage3 = ConvStage(3, 4 * w, 4 * w, residual)
        self.down3 = Down(4 * w, 8 * w)
        self.stage4 = ConvStage(3, 8 * w, 8 * w, residual)
        self.down4 = Down(8 * w, 16 * w)
        self.stage5 = ConvStage(3, 16 * w, 16 * w, residual)
        self.decoder = VNetDecoder(w, residual=residual, dropout=dropout)
        self.head = nn.Conv3d(w, num_classes, kernel_size=1)
        self.apply(init_weights)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C, X, Y, Z) -> [s1 (B, w, X, ...), s2 (B, 2w, X/2, ...), ..., s5 (B, 16w, X/16, ...)]``."""
        s1 = self.stage1(x)
        s2 = self.stage2(self.down1(s1))
        s3 = self.stage3(self.down2(s2))
        s4 = self.stage4(self.down3(s3))
        s5 = self.stage5(self.down4(s4))
        return [s1, s2, s3, s4, s5]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, X, Y, Z) -> (logits (B, K, X, Y, Z), features (B, width, X, Y, Z))``."""
        check_spatial(x)
        features = self.decoder(self.encode(x))
        return self.head(features), features
