"""Prototype contrastive term: uncertain voxels are pulled to their class prototype (InfoNCE).

Shapes: ``features (B, C, *S)``, ``pseudo_label``/``reliable`` ``(B, *S)``; prototypes ``(K, C)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.losses.supervised import class_means


def class_prototypes(
    features: torch.Tensor, pseudo_label: torch.Tensor, reliable: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean of the L2-normalised features of reliable voxels (detached).

    A pseudo-class that is present but has **no reliable voxel** (possible with one global entropy
    percentile, ``loss.classwise_q: false``) takes the mean over **all** its voxels instead, so every
    predicted class has a prototype and the contrastive term stays active (before issue 16 such a class
    was skipped, which made the term an exact 0 without gradient whenever only the background had
    reliable voxels).

    Args:
        features: ``(B, C, *S)``.
        pseudo_label: ``(B, *S)`` int in ``0..K-1``.
        reliable: ``(B, *S)`` bool.
        num_classes: K.

    Returns:
        ``(prototypes (K, C) float32, present (K,) bool)``; ``present`` = the class occurs in
        ``pseudo_label``; rows of absent classes are 0.
    """
    with torch.no_grad():
        c = features.shape[1]
        f = F.normalize(features.detach().float(), dim=1).movedim(1, -1).reshape(-1, c)
        labels = pseudo_label.reshape(-1)
        sel = reliable.reshape(-1)
        protos, has_reliable = class_means(f[sel], labels[sel], num_classes)
        every, present = class_means(f, labels, num_classes)
        fallback = present & ~has_reliable
        return torch.where(fallback[:, None], every, protos), present


def prototype_contrastive_loss(
    features: torch.Tensor,
    pseudo_label: torch.Tensor,
    reliable: torch.Tensor,
    num_classes: int,
    temperature: float = 0.1,
    max_samples: int = 2048,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """InfoNCE pulling uncertain voxels to their pseudo-class prototype, away from the others.

    1. Prototypes ``P_k`` = mean L2-normalised feature of the reliable voxels of pseudo-class k
       (:func:`class_prototypes`, detached); a predicted class with no reliable voxel uses all its
       voxels, so every predicted class has a prototype.
    2. Anchors: uncertain voxels (``~reliable``) whose pseudo-class has a prototype; if there are more
       than ``max_samples`` a random subset of that size is drawn (``torch.randperm`` with
       ``generator``, a CPU generator, for determinism).
    3. For an anchor with normalised feature ``f`` and class ``k``:
       ``-log( exp(cos(f, P_k)/τ) / Σ_{j present} exp(cos(f, P_j)/τ) )``, ``cos`` against the
       re-normalised prototype; the loss is the mean over anchors.

    The anchor features carry gradient (into the network producing ``features``); the prototypes do
    not. Whenever at least two classes are predicted and one voxel is not reliable the loss is > 0 and
    carries gradient (the softmax over >= 2 prototypes is < 1). With a single predicted class it is
    ``-log 1 = 0`` (nothing to contrast against); with no anchor a grad-connected 0.

    Args:
        features: ``(B, C, *S)`` decoder features of one net.
        pseudo_label: ``(B, *S)`` int pseudo-classes.
        reliable: ``(B, *S)`` bool reliability mask of the same net.
        num_classes: K.
        temperature: τ (default 0.1).
        max_samples: cap on the number of anchors.
        generator: CPU ``torch.Generator`` for the subsampling.
    """
    zero = features.sum() * 0.0
    protos, present = class_prototypes(features, pseudo_label, reliable, num_classes)
    if not bool(present.any()):
        return zero
    labels = pseudo_label.reshape(-1).long()
    candidates = torch.nonzero(~reliable.reshape(-1) & present[labels], as_tuple=False).squeeze(1)
    n = candidates.numel()
    if n == 0:
        return zero
    if n > max_samples:
        perm = torch.randperm(n, generator=generator)[:max_samples].to(candidates.device)
        candidates = candidates[perm]
    c = features.shape[1]
    anchors = features.float().movedim(1, -1).reshape(-1, c)[candidates]  # (N, C), carries gradient
    anchors = F.normalize(anchors, dim=1)
    present_idx = torch.nonzero(present, as_tuple=False).squeeze(1)  # (P,)
    keys = F.normalize(protos[present_idx], dim=1)  # (P, C), detached
    # Position of each anchor's class among the present prototypes.
    remap = torch.full((num_classes,), -1, dtype=torch.long, device=labels.device)
    remap[present_idx] = torch.arange(present_idx.numel(), device=labels.device)
    target = remap[labels[candidates]]
    logits = anchors @ keys.t() / temperature  # (N, P)
    return F.cross_entropy(logits, target)
