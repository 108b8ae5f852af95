"""Supervised terms for one network on the labeled part of the batch.

Shapes: ``logits``/``prob`` are ``(B, K, *S)`` (``S`` = spatial axes, usually X, Y, Z), ``target`` is an
integer label map ``(B, *S)`` with values in ``0..K-1``. Every function returns a scalar tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean voxelwise cross-entropy. ``logits (B, K, *S)``, ``target (B, *S)`` int -> scalar."""
    return F.cross_entropy(logits.float(), target.long())


def class_means(values: torch.Tensor, labels: torch.Tensor, num_classes: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean of ``values (N, *D)`` over the rows with ``labels (N,)`` int in ``0..K-1``.

    Returns ``(means (K, *D), present (K,) bool)``; rows of classes without any voxel are 0. Keeps the
    gradient of ``values``.
    """
    lab = labels.long()
    sums = values.new_zeros((num_classes, *values.shape[1:])).index_add(0, lab, values)
    counts = torch.bincount(lab, minlength=num_classes)
    present = counts > 0
    scale = counts.clamp_min(1).to(values.dtype).reshape(num_classes, *([1] * (values.dim() - 1)))
    return sums / scale, present


def class_balanced_mean(
    values: torch.Tensor, labels: torch.Tensor, num_classes: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over the classes present of each class's mean of ``values`` -> scalar.

    ``values (B, *S)`` float (keeps its gradient), ``labels (B, *S)`` int in ``0..K-1``, optional
    ``mask (B, *S)`` bool restricting the voxels. ``(1/|P|) Σ_{c ∈ P} mean_{v: label_v = c, mask_v} values_v``
    with ``P`` the classes having at least one (masked) voxel: every class weighs the same whatever its
    voxel count. A grad-connected 0 when no voxel is selected.
    """
    v = values.float().reshape(-1)
    lab = labels.detach().reshape(-1)
    if mask is not None:
        keep = mask.detach().reshape(-1)
        v, lab = v[keep], lab[keep]
    if v.numel() == 0:
        return values.float().sum() * 0.0
    means, present = class_means(v, lab, num_classes)
    return means[present].mean()


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Multi-class soft Dice loss over all K classes (background included, nothing ignored).

    ``dice_c = (2 Σ p_c g_c + eps) / (Σ p_c + Σ g_c + eps)`` with sums over the batch and all voxels,
    ``g`` the one-hot target; loss ``= 1 - mean_c dice_c``. A class absent from both prediction and
    target scores dice 1 (thanks to ``eps``).

    Args:
        prob: softmax probabilities ``(B, K, *S)``.
        target: labels ``(B, *S)`` int in ``0..K-1``.
    """
    num_classes = prob.shape[1]
    onehot = F.one_hot(target.long(), num_classes).movedim(-1, 1).to(prob.dtype)  # (B, K, *S)
    dims = [0] + list(range(2, prob.dim()))
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    dice = (2.0 * inter + eps) / (denom + eps)
    return 1.0 - dice.mean()


def confident_disagreement_mask(
    prob_student: torch.Tensor, prob_teacher: torch.Tensor, threshold: float = 0.6
) -> torch.Tensor:
    """Voxels where the *teacher* alone is confident and the two nets' argmax disagree.

    Confident means ``max_c p_c >= threshold``. Returns a bool mask ``(B, *S)`` (no gradient).
    Taking the union over both directions gives the paper's "exactly one net confident and
    disagreeing" set; each direction is the half of it in which the other net is the confident one.
    """
    with torch.no_grad():
        conf_s, arg_s = prob_student.max(dim=1)
        conf_t, arg_t = prob_teacher.max(dim=1)
        return (conf_t >= threshold) & (conf_s < threshold) & (arg_s != arg_t)


def confident_disagreement_loss(
    prob_student: torch.Tensor, prob_teacher: torch.Tensor, threshold: float = 0.6
) -> torch.Tensor:
    """``L_cr`` for the student net: pull it toward the confident other net where they disagree.

    Gradient direction: ``prob_teacher`` is detached (it is the target); only ``prob_student`` gets
    gradient. The student is pulled only on ``confident_disagreement_mask(student, teacher)``, i.e.
    where the teacher is confident (``>= threshold``), the student is not, and their argmax differ.
    Calling it with the roles swapped gives the other net's term, so each net is pulled toward the
    other one exactly where the other is the (only) confident one.

    Value: ``Σ_{v ∈ M} Σ_c (p_s[c, v] - p_t[c, v])² / N`` (squared error summed over classes, summed
    over the masked voxels and divided by the number ``N`` of *all* voxels of the batch, like CE and
    Dice); a grad-connected 0 when ``M`` is empty. Dividing by ``|M|`` instead gives each of the few
    masked voxels a weight far above the cross-entropy's per-voxel weight early in training, when
    they are mostly emerging foreground that the other net still calls background: measured on the
    phantom benchmark it held the foreground back (bench/RESULTS.md).

    Args:
        prob_student: softmax of the student ``(B, K, *S)``.
        prob_teacher: softmax of the other net ``(B, K, *S)``.
        threshold: confidence threshold on ``max_c p_c`` (paper: 0.6).
    """
    mask = confident_disagreement_mask(prob_student, prob_teacher, threshold)
    sq = ((prob_student - prob_teacher.detach()) ** 2).sum(dim=1)  # (B, *S)
    return (sq * mask).sum() / mask.numel()
