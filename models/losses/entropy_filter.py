"""Entropy-filtered supervision with a joint pseudo-label and percentile-based adaptive masking.

Shapes: ``prob``/``logits`` ``(B, K, *S)``; voxel maps (entropy, masks, labels) ``(B, *S)``.

Entropy is always computed from **probabilities**: :func:`entropy` refuses a tensor that is not a
probability distribution along the class axis, so the entropy of raw logits (which is NaN or
meaningless and silently disables the filter) cannot happen.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from models.losses.supervised import class_balanced_mean


def check_probabilities(prob: torch.Tensor, dim: int = 1, atol: float = 1e-3) -> None:
    """Raise ``ValueError`` unless ``prob`` is finite, non-negative and sums to 1 (± ``atol``) on ``dim``."""
    with torch.no_grad():
        if not torch.isfinite(prob).all():
            raise ValueError("expected probabilities, got non-finite values")
        if (prob < -atol).any():
            raise ValueError("expected probabilities (softmax output), got negative values — logits?")
        sums = prob.float().sum(dim=dim)
        if ((sums - 1.0).abs() > atol).any():
            worst = float((sums - 1.0).abs().max())
            raise ValueError(
                f"expected probabilities summing to 1 along dim {dim} (max deviation {worst:.3g}); "
                "apply softmax to the logits first"
            )


def entropy(prob: torch.Tensor, dim: int = 1, eps: float = 1e-12) -> torch.Tensor:
    """Voxel entropy ``H = -Σ_c p_c log p_c`` (nats) of probabilities ``(B, K, *S)`` -> ``(B, *S)``.

    Raises ``ValueError`` if ``prob`` is not a probability distribution along ``dim``.
    """
    check_probabilities(prob, dim=dim)
    p = prob.float()
    return -(p * torch.log(p.clamp_min(eps))).sum(dim=dim)


def percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """q-th percentile (0..100) of all elements of ``values`` with linear interpolation.

    Same definition as ``numpy.percentile(..., method="linear")``; uses ``kthvalue`` so it has no size
    limit (``torch.quantile`` refuses inputs above 2**24 elements). Returns a detached 0-d tensor.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be in [0, 100], got {q}")
    flat = values.detach().reshape(-1).float()
    n = flat.numel()
    if n == 0:
        raise ValueError("percentile of an empty tensor")
    pos = q / 100.0 * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    v_lo = flat.kthvalue(lo + 1).values
    if hi == lo or pos == lo:
        return v_lo
    v_hi = flat.kthvalue(hi + 1).values
    return v_lo + (v_hi - v_lo) * (pos - lo)


def reliable_mask(
    prob: torch.Tensor, q: float, pseudo_label: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reliable voxels of one net: entropy at or below the q-th percentile of its entropies.

    The percentile is taken over every voxel of the batch given (the unlabeled batch). Ties at the
    threshold count as reliable, so a batch of equally certain voxels is not rejected wholesale.

    With ``pseudo_label`` the percentile is taken **per pseudo-class** (class-wise adaptive masking):
    each class keeps the q % most certain of *its own* voxels. A small foreground class (a few % of
    the voxels, all of them less certain than the bulk of the background) then still has reliable
    voxels, so the entropy-filtered loss and the prototype term see every class, not background only:
    a class's percentile is at least its lowest entropy, so every pseudo-class present keeps at least
    one reliable voxel. This is the method's filter (DESIGN §4) and the default (``loss.classwise_q``);
    without ``pseudo_label`` one percentile over all voxels is taken (the behaviour before issue 16).

    Args:
        prob: softmax ``(B, K, *S)`` of one net.
        q: percentile in [0, 100] (paper: 20).
        pseudo_label: optional ``(B, *S)`` int pseudo-classes for class-wise thresholds.

    Returns:
        ``(mask (B, *S) bool, threshold)``, both detached; ``threshold`` is 0-d, or ``(K,)`` per class
        with class-wise thresholds (``nan`` for a class with no voxel).
    """
    with torch.no_grad():
        h = entropy(prob)
        if pseudo_label is None:
            thr = percentile(h, q)
            return h <= thr, thr
        labels = pseudo_label.long()
        thresholds = torch.full((prob.shape[1],), float("nan"), device=h.device)
        mask = torch.zeros_like(h, dtype=torch.bool)
        for k in labels.unique().tolist():
            in_k = labels == k
            thresholds[k] = percentile(h[in_k], q)
            mask |= in_k & (h <= thresholds[k])
        return mask, thresholds


def joint_pseudo_label(prob_a: torch.Tensor, prob_b: torch.Tensor) -> torch.Tensor:
    """``argmax_c (p_A + p_B) / 2`` -> ``(B, *S)`` int64, detached. Inputs ``(B, K, *S)``."""
    with torch.no_grad():
        return (prob_a.float() + prob_b.float()).argmax(dim=1)


def entropy_filtered_loss(
    logits: torch.Tensor, pseudo_label: torch.Tensor, reliable: torch.Tensor, balanced: bool = False
) -> torch.Tensor:
    """CE on reliable voxels only, normalised by their count.

    ``Σ_{v reliable} CE(logits[v], ŷ_v) / |reliable|``; a grad-connected 0 when no voxel is reliable.
    The gradient flows into ``logits``; ``pseudo_label`` and ``reliable`` are targets (detached).

    Args:
        logits: ``(B, K, *S)`` of the student net.
        pseudo_label: ``(B, *S)`` int (e.g. :func:`joint_pseudo_label`).
        reliable: ``(B, *S)`` bool (e.g. :func:`reliable_mask`).
        balanced: average per pseudo-class over its reliable voxels, then over the pseudo-classes present
            (:func:`~models.losses.supervised.class_balanced_mean`; not in the paper).
    """
    if balanced:
        ce = F.cross_entropy(logits.float(), pseudo_label.detach().long(), reduction="none")
        return class_balanced_mean(ce, pseudo_label, logits.shape[1], reliable)
    mask = reliable.detach()
    count = mask.sum()
    if count == 0:
        return logits.float().sum() * 0.0
    ce = F.cross_entropy(logits.float(), pseudo_label.detach().long(), reduction="none")
    return (ce * mask).sum() / count
