"""Inference-time graph simplification: fold eval-mode BatchNorm into the preceding convolution.

A 3D network spends a large share of CPU time in memory-bound element-wise passes over big activation
tensors; folding each BatchNorm3d into its convolution's weights and bias removes one such pass per
layer with identical results (up to float rounding). Only pairs where the BatchNorm directly consumes
the convolution's output are folded: consecutive members of an ``nn.Sequential`` and the ``convN`` /
``bnN`` attributes of residual blocks (``forward`` applies ``bnN(convN(x))``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

_CONVS = (nn.Conv3d, nn.ConvTranspose3d)


@torch.no_grad()
def _fold(conv: nn.Conv3d | nn.ConvTranspose3d, bn: nn.BatchNorm3d) -> None:
    assert bn.running_mean is not None and bn.running_var is not None
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(
        bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
    # Conv3d weight: (out, in/groups, k, k, k); ConvTranspose3d weight: (in, out/groups, k, k, k)
    axis = 1 if isinstance(conv, nn.ConvTranspose3d) else 0
    shape = [1] * conv.weight.dim()
    shape[axis] = -1
    conv.weight.mul_(scale.reshape(shape))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.bias = nn.Parameter(bias * scale + shift)


def fold_batchnorm(net: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``net`` in eval mode with conv→BatchNorm pairs folded; returns (copy, pairs folded).

    ``net`` itself is left untouched (training code may still need its BatchNorm layers).
    """
    fused = copy.deepcopy(net).eval()
    count = 0
    for module in list(fused.modules()):
        if isinstance(module, nn.Sequential):
            items = list(module._modules.items())
            for (_, first), (name, second) in zip(items, items[1:], strict=False):
                if isinstance(first, _CONVS) and isinstance(second, nn.BatchNorm3d):
                    _fold(first, second)
                    module._modules[name] = nn.Identity()
                    count += 1
        for i in range(1, 4):
            conv, bn = getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None)
            if isinstance(conv, _CONVS) and isinstance(bn, nn.BatchNorm3d):
                _fold(conv, bn)
                setattr(module, f"bn{i}", nn.Identity())
                count += 1
    return fused, count
