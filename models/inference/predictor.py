"""Whole-volume prediction with both nets: mask, normalised entropy, disagreement, uncertain regions.

Pipeline (DESIGN.md section 5): input grid -> canonical RAS (permute / flip) -> model spacing -> intensity
normalisation -> Gaussian sliding window over both nets (mean of their softmax) -> probabilities resampled
(trilinear) back to the canonical grid -> argmax / entropy / disagreement there -> canonical orientation
undone. Every output therefore has exactly the input's shape and affine.

Definitions (on the input grid, from the resampled probabilities):
  - ``mask`` = argmax_c p̄_c, p̄ = (p_A + p_B) / 2 (uint8);
  - ``entropy`` = -Σ_c p̄_c log p̄_c / log K, clipped to [0, 1] (float32);
  - ``disagreement`` = 1.0 where argmax p_A != argmax p_B, else 0.0 (float32) — a binary map of the voxels
    on which the two networks predict different classes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from models.data.transforms import OrientationRecord, PreprocessRecord, preprocess, resample
from models.inference.fuse import fold_batchnorm
from models.inference.onednn import onednn_available, onednn_graph
from models.inference.ood import case_features, score_case
from models.inference.regions import extract_regions
from models.inference.sliding import ImportanceMapCache, sliding_window_dual
from models.package import ModelPackage
from models.runtime import resolve_amp

logger = logging.getLogger(__name__)

ProgressFn = Callable[[float], None]

# progress fractions at the end of each stage
_P_PRE, _P_INFER, _P_POST = 0.05, 0.90, 0.97
_SLAB_VOXELS = 1 << 22  # voxels per slab in the post-processing reductions


def normalized_entropy(probs: torch.Tensor) -> torch.Tensor:
    """``probs (K, ...)`` summing to 1 over K -> ``-Σ p log p / log K`` clipped to [0, 1], shape ``(...)``."""
    k = probs.shape[0]
    h = -torch.special.xlogy(probs, probs).sum(dim=0)
    return (h / math.log(k)).clamp_(0.0, 1.0)


@dataclass
class Prediction:
    """Outputs on the input's own grid: arrays ``(X, Y, Z)`` of the input, ``affine`` = the input's."""

    mask: np.ndarray
    entropy: np.ndarray
    disagreement: np.ndarray | None
    regions: list[dict[str, Any]]
    timings: dict[str, float]
    affine: np.ndarray = field(repr=False)
    #: case-level feature vector (models/inference/ood.py) and its out-of-distribution verdict against the
    #: package's reference (``ood_score``, ``out_of_distribution``, ``ood_reason``; None without a reference)
    features: dict[str, float] = field(default_factory=dict)
    ood: dict[str, Any] = field(default_factory=dict)


def first_argmax(probs: torch.Tensor) -> torch.Tensor:
    """``argmax`` over the class axis of ``(K, *S)`` finite scores as uint8 (first maximum on ties).

    Same result as ``probs.argmax(dim=0)`` for finite inputs and ``K <= 256``, but a running maximum
    over the K contiguous class planes instead of a strided reduction across them: several times
    faster on a CPU for a whole volume (the reduction dominated the post-processing time).
    """
    best = probs[0].clone()
    index = torch.zeros(best.shape, dtype=torch.uint8, device=probs.device)
    for c in range(1, probs.shape[0]):
        better = probs[c] > best
        index.masked_fill_(better, c)
        torch.maximum(best, probs[c], out=best)
    return index


def _check_model_grid(data: torch.Tensor, record: PreprocessRecord) -> None:
    if tuple(data.shape[-3:]) != tuple(record.model_shape):
        raise ValueError(f"probabilities have spatial shape {tuple(data.shape[-3:])}, "
                         f"expected the model grid {record.model_shape}")


def _input_layout(reversed_canonical: torch.Tensor, orient: OrientationRecord) -> np.ndarray:
    """``(Z', Y', X')`` C-ordered canonical-grid tensor -> ``(X, Y, Z)`` array in the input's orientation,
    Fortran-ordered (a view when the input is in canonical orientation; one copy otherwise)."""
    canon = reversed_canonical.cpu().numpy().T  # (X', Y', Z'), F-contiguous view
    flips = tuple(a for a in range(3) if orient.flips[a])
    flipped = np.flip(canon, axis=flips) if flips else canon
    inverse = [0, 0, 0]
    for a, p in enumerate(orient.perm):
        inverse[p] = a
    return np.asfortranarray(np.transpose(flipped, inverse))


class Predictor:
    """Runs a loaded :class:`~models.package.ModelPackage` on whole volumes.

    Args:
        package: the loaded package (its nets are moved to ``device`` and put in eval mode).
        device: ``torch.device`` or a string such as ``"cpu"`` / ``"cuda:0"``.
        overlap: sliding-window overlap fraction in [0, 1).
        batch_size: windows per forward pass (both nets run on the same batch).
        amp: autocast setting, see :func:`resolve_amp`.
        disagreement: also compute the per-net disagreement map (keeps one buffer per net).
        fold_bn: fold eval-mode BatchNorm into the convolutions (same results up to float rounding).
        onednn: run the (folded) nets as oneDNN graphs — every convolution on oneDNN, channels-last,
            prepacked weights, ReLU and residual sums fused (models/inference/onednn.py; same results up
            to float rounding). ``None`` (default) = on where it applies: a CPU device, float32 (no
            autocast), ``fold_bn`` on, and a torch build with the oneDNN ops; ``True`` raises
            ValueError where it does not apply; ``False`` = the plain eval-mode modules.
        region_threshold, min_region_voxels, max_regions: passed to
            :func:`~models.inference.regions.extract_regions`.
    """

    def __init__(
        self,
        package: ModelPackage,
        device: torch.device | str = "cpu",
        overlap: float = 0.5,
        batch_size: int = 2,
        amp: bool | str = False,
        disagreement: bool = True,
        region_threshold: float = 0.5,
        min_region_voxels: int = 10,
        max_regions: int = 20,
        fold_bn: bool = True,
        onednn: bool | None = None,
    ) -> None:
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.package = package
        self.card = package.card
        self.device = torch.device(device)
        self.net_a = package.net_a.to(self.device).eval()
        self.net_b = package.net_b.to(self.device).eval()
        self.amp_dtype = resolve_amp(amp, self.device)
        applies = bool(fold_bn) and self.amp_dtype is None and onednn_available(self.device)
        if onednn and not applies:
            raise ValueError(
                "onednn=True needs a CPU device, fold_bn=True, no autocast and a torch build "
                "with the oneDNN ops"
            )
        self.onednn = applies if onednn is None else bool(onednn)
        if fold_bn:  # inference-only copies with BatchNorm folded into the convolutions (inference/fuse.py)
            self.net_a = fold_batchnorm(self.net_a)[0]
            self.net_b = fold_batchnorm(self.net_b)[0]
        if self.onednn:  # oneDNN graphs of the folded copies (models/inference/onednn.py)
            self.net_a = onednn_graph(self.net_a)
            self.net_b = onednn_graph(self.net_b)
        self.overlap = float(overlap)
        self.batch_size = int(batch_size)
        self.disagreement = bool(disagreement)
        self.region_threshold = float(region_threshold)
        self.min_region_voxels = int(min_region_voxels)
        self.max_regions = int(max_regions)
        self.importance_maps = ImportanceMapCache()

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return self.card.patch

    def importance_map(self) -> torch.Tensor:
        """The cached Gaussian map ``(px, py, pz)`` for the card's patch on this device."""
        return self.importance_maps.get(self.patch_size, self.device)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def model_probabilities(
        self, image: np.ndarray | torch.Tensor, progress: ProgressFn | None = None
    ) -> torch.Tensor:
        """Sliding-window softmax on the model grid.

        Args:
            image: preprocessed ``(C, X', Y', Z')``.

        Returns:
            float32 on ``self.device``: ``(2, K, X', Y', Z')`` (net A, net B) when ``disagreement`` is on,
            else the mean ``(K, X', Y', Z')``.
        """
        x = torch.as_tensor(image, dtype=torch.float32).to(self.device)
        if x.ndim != 4 or x.shape[0] != self.card.in_channels:
            raise ValueError(f"image must be ({self.card.in_channels}, X, Y, Z), got {tuple(x.shape)}")
        with torch.inference_mode():
            probs = sliding_window_dual(
                x,
                (self.net_a, self.net_b),
                self.patch_size,
                overlap=self.overlap,
                batch_size=self.batch_size,
                importance_map=self.importance_map(),
                amp_dtype=self.amp_dtype,
                combine="per_net" if self.disagreement else "mean",
                num_classes=self.card.num_classes,
                progress=progress,
            )
        return probs

    def _postprocess(
        self, probs: torch.Tensor, record: PreprocessRecord
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Model-grid probabilities -> (mask uint8, entropy float32, disagreement float32 | None) on the
        input grid, as Fortran-ordered arrays (NIfTI's and the DICOM frames' voxel order).

        The small model-grid probabilities are resampled with their spatial axes reversed, so every
        full-size array is computed directly in ``(Z, Y, X)`` memory order and no full-size transpose is
        needed by the writers (trilinear resampling is separable: the same values up to float rounding).
        """
        k = self.card.num_classes
        orient = record.orientation
        reversed_shape = tuple(reversed(orient.canonical_shape))
        with torch.inference_mode():
            if probs.ndim == 5:  # (2, K, ...): resample mean and net A together; p_B = 2 * mean - p_A
                stacked = torch.cat([probs.mean(dim=0), probs[0]], dim=0)
                del probs
            else:
                stacked = probs
            _check_model_grid(stacked, record)
            canon = resample(stacked.permute(0, 3, 2, 1), reversed_shape, "trilinear")  # (C, Z, Y, X)
            del stacked
            shape, device = canon.shape[1:], canon.device
            mask = torch.empty(shape, dtype=torch.uint8, device=device)
            entropy = torch.empty(shape, dtype=torch.float32, device=device)
            disagree = torch.empty(shape, dtype=torch.float32, device=device) if canon.shape[0] > k else None
            # slabs along the first axis bound the temporaries
            step = max(1, _SLAB_VOXELS // max(1, shape[1] * shape[2]))
            for start in range(0, shape[0], step):
                sl = slice(start, start + step)
                mean = canon[:k, sl]
                mask[sl] = first_argmax(mean)
                entropy[sl] = normalized_entropy(mean)
                if disagree is not None:
                    p_a = canon[k:, sl]
                    p_b = 2.0 * mean - p_a
                    disagree[sl] = (first_argmax(p_a) != first_argmax(p_b)).to(torch.float32)
            del canon
        mask_np = _input_layout(mask, orient)
        entropy_np = _input_layout(entropy, orient)
        disagree_np = None if disagree is None else _input_layout(disagree, orient)
        return mask_np, entropy_np, disagree_np

    def predict(
        self, volume: np.ndarray, affine: np.ndarray, progress: ProgressFn | None = None
    ) -> Prediction:
        """Segment one volume.

        Args:
            volume: ``(X, Y, Z)`` (or ``(C, X, Y, Z)`` channel-first for multi-channel models), any dtype.
            affine: its 4x4 voxel-to-RAS affine.
            progress: called with fractions in [0, 1], non-decreasing, last call 1.0.

        Returns:
            :class:`Prediction` with ``mask``, ``entropy``, ``disagreement`` of shape ``(X, Y, Z)``.
        """
        last = [0.0]

        def report(fraction: float) -> None:
            fraction = min(max(fraction, last[0]), 1.0)
            last[0] = fraction
            if progress is not None:
                progress(fraction)

        timings: dict[str, float] = {}
        report(0.0)
        t0 = time.perf_counter()
        image, record = preprocess(volume, affine, self.card.preprocessing)
        t1 = time.perf_counter()
        timings["preprocess"] = t1 - t0
        report(_P_PRE)

        probs = self.model_probabilities(image, lambda f: report(_P_PRE + (_P_INFER - _P_PRE) * f))
        self._sync()
        t2 = time.perf_counter()
        timings["inference"] = t2 - t1
        features = case_features(image, probs)
        ood = score_case(self.card.training.get("ood_reference"), features)
        del image
        timings["ood"] = time.perf_counter() - t2
        t2 = time.perf_counter()

        mask, entropy, disagreement = self._postprocess(probs, record)
        del probs
        t3 = time.perf_counter()
        timings["postprocess"] = t3 - t2
        report(_P_POST)

        regions = extract_regions(
            entropy,
            record.input_affine,
            threshold=self.region_threshold,
            min_voxels=self.min_region_voxels,
            max_regions=self.max_regions,
            mask=mask,
        )
        t4 = time.perf_counter()
        timings["regions"] = t4 - t3
        timings["total"] = t4 - t0
        report(1.0)
        logger.info(
            "predicted volume %s -> model grid %s in %.2f s", record.input_shape, record.model_shape, t4 - t0
        )
        return Prediction(
            mask=mask,
            entropy=entropy,
            disagreement=disagreement,
            regions=regions,
            timings=timings,
            affine=record.input_affine.copy(),
            features=features,
            ood=ood,
        )
