"""CPU inference graph: oneDNN convolutions with fused post-ops on channels-last tensors.

What eager PyTorch does on a CPU for these 3D nets, and what this module changes (measured on the
full-size nets, 112×112×80 windows, one thread; numbers in bench/RESULTS.md):

- ``nn.Conv3d`` picks its kernel by a heuristic: with one window per batch, the first convolution
  (1 input channel) and the bottleneck (7×7×5) fall back to the slow im2col path, several times slower
  than oneDNN. Here every convolution calls oneDNN (``torch.ops.mkldnn._convolution_pointwise``).
- activations are NCDHW, so oneDNN reorders every input and output to its blocked layout. Here they
  stay channels-last (``torch.channels_last_3d``), which oneDNN's brgemm kernels use directly, and the
  weights are reordered once ("prepacked") on the first call instead of on every call.
- ReLU and residual additions are separate passes over large activation tensors. Here they are fused
  into the convolution as oneDNN post-ops: ``relu(conv(x))`` and ``relu(conv(y) + residual)``; the
  residual sum is written into the residual tensor itself where that tensor is a temporary nobody else
  reads (the rules are in :func:`onednn_graph`), and the decoder's skip additions are in-place.

The result is the same function up to float rounding (tests compare it with the plain nets). It is
used for float32 inference on a CPU only: on CUDA, with autocast, or when the oneDNN ops are missing
from the torch build, the predictor keeps the plain (BatchNorm-folded) nets.

``onednn_graph`` expects eval-mode nets with BatchNorm already folded (models/inference/fuse.py);
unknown modules are kept as they are (only their plain convolutions are replaced), so the conversion
is always correct and only the fusions depend on the known block types of models/networks.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import TypeGuard

import torch
from torch import nn

from models.networks.blocks import ConvStage, VNetDecoder
from models.networks.resnet_vnet import BasicBlock3d
from models.networks.vnet import VNet

MEMORY_FORMAT = torch.channels_last_3d


def onednn_available(device: torch.device | str = "cpu") -> bool:
    """True when ``device`` is a CPU and this torch build has the oneDNN fused-convolution ops."""
    if torch.device(device).type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    try:
        ops = torch.ops.mkldnn
        for name in (
            "_convolution_pointwise",
            "_convolution_transpose_pointwise",
            "_reorder_convolution_weight",
            "_reorder_convolution_transpose_weight",
        ):
            getattr(ops, name)
        ops._convolution_pointwise_.binary  # noqa: B018 - the in-place residual overload
    except (AttributeError, RuntimeError):
        return False
    return True


def _supported(conv: nn.Module) -> TypeGuard[nn.Conv3d | nn.ConvTranspose3d]:
    return (
        isinstance(conv, nn.Conv3d | nn.ConvTranspose3d)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and conv.weight.dtype == torch.float32
        and conv.weight.device.type == "cpu"
    )


class OneDNNConv(nn.Module):
    """A ``Conv3d`` / ``ConvTranspose3d`` run by oneDNN with an optional fused post-op.

    ``forward(x)`` -> ``post(conv(x))``; ``forward(x, residual)`` -> ``post(conv(x) + residual)``
    (``post`` is ``"relu"`` or ``"none"``), written into ``residual`` when ``inplace`` (the caller
    guarantees that nobody reads ``residual`` afterwards). Inference only: the weights are plain
    attributes (no parameters) and are reordered to oneDNN's layout on the first call.
    """

    def __init__(self, conv: nn.Conv3d | nn.ConvTranspose3d, post: str = "none") -> None:
        super().__init__()
        if not _supported(conv):
            raise ValueError(f"unsupported convolution for oneDNN: {conv}")
        if post not in ("none", "relu"):
            raise ValueError(f"post must be 'none' or 'relu', got {post!r}")
        self.transposed = isinstance(conv, nn.ConvTranspose3d)
        self.padding = list(conv.padding)
        self.stride = list(conv.stride)
        self.dilation = list(conv.dilation)
        self.output_padding = list(conv.output_padding) if self.transposed else []
        self.groups = int(conv.groups)
        self.post = post
        weight = conv.weight.detach()
        self.weight_shape = tuple(weight.shape)
        # the dense weight until the first call, then the same weight in oneDNN's layout (opaque tensor)
        self.weight = weight.clone() if self.transposed else weight.contiguous(memory_format=MEMORY_FORMAT)
        self.packed = False
        self.bias = None if conv.bias is None else conv.bias.detach().contiguous()

    def extra_repr(self) -> str:
        kind = "transposed, " if self.transposed else ""
        return f"{kind}weight={self.weight_shape}, stride={self.stride}, post={self.post}"

    def _weight_for(self, x: torch.Tensor) -> torch.Tensor:
        # Reordered once, for the first input shape, and the dense copy dropped; for another shape
        # (e.g. a smaller last batch) oneDNN reorders internally if it wants another layout, so every
        # shape stays correct.
        if not self.packed:
            ops = torch.ops.mkldnn
            if self.transposed:
                self.weight = ops._reorder_convolution_transpose_weight(
                    self.weight,
                    self.padding,
                    self.output_padding,
                    self.stride,
                    self.dilation,
                    self.groups,
                    list(x.shape),
                )
            else:
                self.weight = ops._reorder_convolution_weight(
                    self.weight, self.padding, self.stride, self.dilation, self.groups, list(x.shape)
                )
            self.packed = True
        return self.weight

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None, inplace: bool = False
    ) -> torch.Tensor:
        ops = torch.ops.mkldnn
        w = self._weight_for(x)
        if self.transposed:
            if residual is not None:
                raise ValueError("a transposed convolution takes no residual")
            return ops._convolution_transpose_pointwise(
                x,
                w,
                self.bias,
                self.padding,
                self.output_padding,
                self.stride,
                self.dilation,
                self.groups,
                self.post,
                [],
                "",
            )
        if residual is None:
            return ops._convolution_pointwise(
                x, w, self.bias, self.padding, self.stride, self.dilation, self.groups, self.post, [], ""
            )
        if inplace and residual.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
            # the in-place variant writes the sum into its first argument, the residual
            fn, first, second = ops._convolution_pointwise_.binary, residual, x
        else:
            fn, first, second = ops._convolution_pointwise.binary, x, residual
        return fn(
            first, second, w, self.bias, self.padding, self.stride, self.dilation, self.groups,
            "add", 1.0, self.post, [], "",
        )


def _fused_chain(items: Iterable[nn.Module], input_owned: bool) -> list[nn.Module]:
    """Convert a sequence of layers: ``conv [Identity…] ReLU`` -> one conv with a fused ReLU.

    The first item's input is owned by the chain iff ``input_owned``; every later item's input is the
    previous item's output, read by nobody else.
    """
    mods = [m for m in items if not isinstance(m, nn.Identity)]
    out: list[nn.Module] = []
    i = 0
    while i < len(mods):
        m = mods[i]
        if _supported(m):
            relu = i + 1 < len(mods) and isinstance(mods[i + 1], nn.ReLU)
            out.append(OneDNNConv(m, "relu" if relu else "none"))
            i += 2 if relu else 1
        else:
            out.append(_convert(m, input_owned=input_owned if not out else True))
            i += 1
    return out


class _Chain(nn.Sequential):
    """``nn.Sequential`` of converted layers (kept a Sequential so indexing and repr work)."""


class _Stage(nn.Module):
    """``ConvStage``: ``body(x)``, or ``relu(body(x) + x)`` with the sum fused into the last conv."""

    def __init__(self, stage: ConvStage, input_owned: bool) -> None:
        super().__init__()
        self.residual = bool(stage.residual)
        self.last: OneDNNConv | None
        layers = _fused_chain(stage.body, input_owned=False)
        if self.residual:
            last = layers[-1]
            if not isinstance(last, OneDNNConv) or last.post != "none" or last.transposed:
                raise ValueError("a residual stage must end with a plain convolution")
            last.post = "relu"
            self.body, self.last = _Chain(*layers[:-1]), last
        else:
            self.body, self.last = _Chain(*layers), None
        self.inplace = bool(input_owned)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.last is None:
            return y
        # with a one-convolution body y is x itself: the sum cannot overwrite the conv's own input
        return self.last(y, residual=x, inplace=self.inplace and y is not x)


class _BasicBlock(nn.Module):
    """``BasicBlock3d``: ``relu(conv2(relu(conv1(x))) + shortcut(x))`` with ReLU and sum fused."""

    def __init__(self, block: BasicBlock3d, input_owned: bool) -> None:
        super().__init__()
        if not (_supported(block.conv1) and _supported(block.conv2)):
            raise ValueError("unsupported BasicBlock3d convolutions")
        self.conv1 = OneDNNConv(block.conv1, "relu")
        self.conv2 = OneDNNConv(block.conv2, "relu")
        self.identity = isinstance(block.shortcut, nn.Identity)
        shortcut = block.shortcut
        self.shortcut = (
            shortcut
            if self.identity
            else _Chain(
                *_fused_chain(
                    shortcut if isinstance(shortcut, nn.Sequential) else [shortcut], input_owned=False
                )
            )
        )
        # a projection shortcut makes a fresh tensor; the identity one is the block's input
        self.inplace = bool(input_owned) or not self.identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut(x)
        return self.conv2(self.conv1(x), residual=residual, inplace=self.inplace)


class _Decoder(nn.Module):
    """``VNetDecoder`` in eval mode (dropout is the identity) with in-place skip additions."""

    def __init__(self, decoder: VNetDecoder) -> None:
        super().__init__()
        # every stage reads a fresh sum up(x) + skip, which it may overwrite
        self.up5 = _convert(decoder.up5)
        self.stage6 = _convert(decoder.stage6, input_owned=True)
        self.up6 = _convert(decoder.up6)
        self.stage7 = _convert(decoder.stage7, input_owned=True)
        self.up7 = _convert(decoder.up7)
        self.stage8 = _convert(decoder.stage8, input_owned=True)
        self.up8 = _convert(decoder.up8)
        self.stage9 = _convert(decoder.stage9, input_owned=True)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        s1, s2, s3, s4, s5 = skips
        x = self.stage6(self.up5(s5).add_(s4))
        x = self.stage7(self.up6(x).add_(s3))
        x = self.stage8(self.up7(x).add_(s2))
        return self.stage9(self.up8(x).add_(s1))


def _convert(module: nn.Module, input_owned: bool = False) -> nn.Module:
    # exact types only: a subclass may have another forward, and is converted like any unknown module
    special = {ConvStage: _Stage, BasicBlock3d: _BasicBlock}.get(type(module))
    if special is not None:
        try:
            return special(module, input_owned)
        except ValueError:  # e.g. a convolution oneDNN is not given: convert it as an unknown module
            pass
    if type(module) is VNetDecoder:
        return _Decoder(module)
    if type(module) is nn.Sequential:
        return _Chain(*_fused_chain(module, input_owned))
    if _supported(module):
        return OneDNNConv(module)
    owned_children: set[str] = set()
    if type(module) is VNet:  # stage2..5 read the output of down1..4, nothing else does
        owned_children = {"stage2", "stage3", "stage4", "stage5"}
    for name, child in list(module.named_children()):
        setattr(module, name, _convert(child, input_owned=name in owned_children))
    return module


class OneDNNNet(nn.Module):
    """The converted net behind the original interface: any-layout ``(B, C, X, Y, Z)`` input, outputs
    as the net's (a tensor or a tuple whose first item is the logits), the logits made contiguous (NCDHW)
    so that the caller's soft-max and accumulation run on the usual layout; other outputs stay
    channels-last."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.net(x.contiguous(memory_format=MEMORY_FORMAT))
        if isinstance(out, torch.Tensor):
            return out.contiguous()
        return (out[0].contiguous(), *out[1:])


def onednn_graph(net: nn.Module) -> OneDNNNet:
    """An inference copy of ``net`` (eval mode, BatchNorm folded) running on oneDNN (see module doc).

    The copy runs channels-last inside and takes and returns the usual layout (:class:`OneDNNNet`).
    ``net`` itself is not modified.

    In-place residual sums are used only where the residual tensor is provably a temporary: the
    projection shortcut of a block, the input of block i > 0 of an ``nn.Sequential`` (the previous
    block's output), the inputs of V-Net stages 2–5 (the down-sampling outputs) and of the decoder
    stages (the fresh ``up(x) + skip`` sums). Anything else gets an out-of-place sum.
    """
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        raise ValueError("fold BatchNorm first (models.inference.fuse.fold_batchnorm)")
    if net.training:
        raise ValueError("onednn_graph needs an eval-mode net")
    with torch.no_grad():
        return OneDNNNet(_convert(copy.deepcopy(net), input_owned=False)).eval()
