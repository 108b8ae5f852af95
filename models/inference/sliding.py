"""Gaussian-weighted sliding-window inference of the two networks on the same windows.

Window placement, padding, the Gaussian importance map and the blending are those of MONAI's
``sliding_window_inference(mode="gaussian", sigma_scale=0.125, padding_mode="constant")``, so each net's
blended probabilities agree with MONAI's to float precision (tests check it); what differs is that both
nets run on one batch of windows, the importance map is cached, and buffers are preallocated once.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Patch = tuple[int, int, int]


def _as_patch(size: Sequence[int]) -> Patch:
    if len(size) != 3 or any(int(s) <= 0 for s in size):
        raise ValueError(f"patch size must be 3 positive integers, got {size}")
    return int(size[0]), int(size[1]), int(size[2])


def gaussian_importance_map(
    patch_size: Sequence[int],
    sigma_scale: float = 0.125,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Separable Gaussian weights ``(X, Y, Z)`` with peak 1 at the patch centre, sigma = scale * size.

    Identical to ``monai.data.utils.compute_importance_map(mode="gaussian")``, including the clamp of
    the smallest weights to ``max(min, 1e-3)`` that keeps every voxel's weight positive.
    """
    patch = _as_patch(patch_size)
    weights: torch.Tensor | None = None
    for axis, n in enumerate(patch):
        sigma = sigma_scale * n
        x = torch.arange(-(n - 1) / 2.0, (n - 1) / 2.0 + 1, dtype=torch.float, device=device)
        g = torch.exp(x**2 / (-2 * sigma**2))
        weights = g if axis == 0 else weights.unsqueeze(-1) * g[(None,) * axis]  # type: ignore[union-attr]
    assert weights is not None
    floor = max(float(weights.min().item()), 1e-3)
    return torch.clamp_(weights, min=floor).to(dtype)


class ImportanceMapCache:
    """Gaussian importance maps computed once per (patch size, sigma, device, dtype) and reused.

    Owned by a :class:`~models.inference.predictor.Predictor` (no module-level state).
    """

    def __init__(self, sigma_scale: float = 0.125) -> None:
        self.sigma_scale = sigma_scale
        self._maps: dict[tuple[Patch, str, torch.dtype], torch.Tensor] = {}

    def get(
        self, patch_size: Sequence[int], device: torch.device | str, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Cached map ``(X, Y, Z)`` on ``device`` (the same tensor object on every call)."""
        key = (_as_patch(patch_size), str(torch.device(device)), dtype)
        if key not in self._maps:
            self._maps[key] = gaussian_importance_map(key[0], self.sigma_scale, device, dtype)
        return self._maps[key]

    def __len__(self) -> int:
        return len(self._maps)


def window_starts(image_size: Sequence[int], patch_size: Sequence[int], overlap: float) -> list[Patch]:
    """Start corners of the windows covering ``image_size`` (each axis >= the patch), MONAI's order.

    The stride is ``int(patch * (1 - overlap))`` (at least 1; one window when the axis equals the patch);
    the last window of each axis is shifted back to end exactly at the border. Last axis varies fastest.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    per_axis: list[list[int]] = []
    for size, patch in zip(image_size, _as_patch(patch_size), strict=True):
        if size < patch:
            raise ValueError(f"image axis {size} smaller than patch {patch}: pad first")
        stride = patch if size == patch else max(int(patch * (1 - overlap)), 1)
        num = int(math.ceil(size / stride))
        count = next((d + 1 for d in range(num) if d * stride + patch >= size), 1)
        per_axis.append([i * stride - max(i * stride + patch - size, 0) for i in range(count)])
    return [(a, b, c) for a, b, c in itertools.product(*per_axis)]


def _pad_amounts(spatial: Sequence[int], patch: Patch) -> list[tuple[int, int]]:
    """``(before, after)`` per spatial axis to reach at least the patch size, split as MONAI does."""
    out = []
    for size, p in zip(spatial, patch, strict=True):
        diff = max(p - size, 0)
        out.append((diff // 2, diff - diff // 2))
    return out


def autocast_context(
    device: torch.device, amp_dtype: torch.dtype | None
) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``amp_dtype`` on ``device``, or a no-op context when None."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def _logits(output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def _batches(starts: list[Patch], batch_size: int) -> Iterator[list[Patch]]:
    for i in range(0, len(starts), batch_size):
        yield starts[i : i + batch_size]


def sliding_window_dual(
    image: torch.Tensor,
    nets: Sequence[nn.Module],
    patch_size: Sequence[int],
    *,
    overlap: float = 0.5,
    batch_size: int = 2,
    importance_map: torch.Tensor | None = None,
    amp_dtype: torch.dtype | None = None,
    combine: str = "per_net",
    pad_value: float = 0.0,
    num_classes: int | None = None,
    progress: Callable[[float], None] | None = None,
) -> torch.Tensor:
    """Blend each net's softmax over Gaussian-weighted windows.

    Args:
        image: ``(C, X, Y, Z)`` on the nets' device (already preprocessed).
        nets: networks in eval mode; ``net(x (B, C, px, py, pz))`` returns logits ``(B, K, px, py, pz)``
            (or a tuple whose first item is the logits). All nets see the same batch of windows.
        patch_size: window ``(px, py, pz)``; an image smaller than the patch along an axis is padded
            symmetrically with ``pad_value`` and the output cropped back.
        overlap: fraction of the patch shared by neighbouring windows, in ``[0, 1)``.
        batch_size: windows per forward pass.
        importance_map: ``(px, py, pz)`` weights on the image's device (e.g. from
            :class:`ImportanceMapCache`); computed when None.
        amp_dtype: autocast dtype (``torch.bfloat16`` / ``torch.float16``) or None for full precision.
            Softmax and accumulation are always float32.
        combine: ``"per_net"`` -> ``(N, K, X, Y, Z)``, one blended map per net; ``"mean"`` -> the mean of
            the nets' maps ``(K, X, Y, Z)`` with a single accumulation buffer.
        num_classes: K, when known, so the accumulation buffer is allocated before the first window
            (otherwise after the first forward pass); a net returning another K raises ValueError.
        progress: called with the fraction of windows done (0..1, monotone).

    Returns:
        float32 probabilities on the image's device, shape as given by ``combine``; the weighted mean
        ``sum_w w * p / sum_w w`` of the windows' probabilities at every voxel.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (C, X, Y, Z), got {tuple(image.shape)}")
    if combine not in ("per_net", "mean"):
        raise ValueError(f"combine must be 'per_net' or 'mean', got {combine!r}")
    if batch_size < 1 or not nets:
        raise ValueError("batch_size must be >= 1 and at least one net is needed")
    patch = _as_patch(patch_size)
    device = image.device
    spatial = tuple(image.shape[1:])
    pads = _pad_amounts(spatial, patch)
    if any(b or a for b, a in pads):
        flat = [v for b, a in reversed(pads) for v in (b, a)]
        image = F.pad(image, flat, mode="constant", value=pad_value)
    padded = tuple(image.shape[1:])
    if importance_map is None:
        importance_map = gaussian_importance_map(patch, device=device)
    weight_patch = importance_map.to(device=device, dtype=torch.float32)
    if tuple(weight_patch.shape) != patch:
        raise ValueError(f"importance map shape {tuple(weight_patch.shape)} != patch {patch}")
    starts = window_starts(padded, patch, overlap)

    n_out = len(nets) if combine == "per_net" else 1
    out: torch.Tensor | None = None  # (n_out, K, *padded), allocated once K is known
    if num_classes is not None:
        out = torch.zeros((n_out, num_classes, *padded), dtype=torch.float32, device=device)
    weight_sum = torch.zeros(padded, dtype=torch.float32, device=device)
    done = 0
    for group in _batches(starts, batch_size):
        slices = [tuple(slice(s, s + p) for s, p in zip(start, patch, strict=True)) for start in group]
        windows = torch.stack([image[(slice(None), *sl)] for sl in slices])
        for n, net in enumerate(nets):
            with autocast_context(device, amp_dtype):
                logits = _logits(net(windows))
            probs = torch.softmax(logits.float(), dim=1)
            probs.mul_(weight_patch)
            if out is None:
                out = torch.zeros((n_out, probs.shape[1], *padded), dtype=torch.float32, device=device)
            elif probs.shape[1] != out.shape[1]:
                raise ValueError(f"net {n} returned {probs.shape[1]} classes, expected {out.shape[1]}")
            if combine == "mean":
                probs.mul_(1.0 / len(nets))
            target = out[n if combine == "per_net" else 0]
            for i, sl in enumerate(slices):
                target[(slice(None), *sl)] += probs[i]
        for sl in slices:
            weight_sum[sl] += weight_patch
        done += len(group)
        if progress is not None:
            progress(done / len(starts))
    assert out is not None
    out.div_(weight_sum)
    crop = tuple(slice(b, b + s) for (b, _), s in zip(pads, spatial, strict=True))
    out = out[(slice(None), slice(None), *crop)]
    if any(b or a for b, a in pads):
        out = out.contiguous()
    return out if combine == "per_net" else out[0]
