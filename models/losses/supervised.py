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


def soft_dice_loss(
    prob: torch.Tensor, target: torch.Tensor, eps: float = 1e-5, include_background: bool = False,
    squared: bool = False,
) -> torch.Tensor:
    """Multi-class soft Dice loss, foreground classes only by default (the method's supervised Dice).

    ``dice_c = (2 Σ p_c g_c + eps) / (Σ p_c + Σ g_c + eps)`` with sums over the batch and all voxels,
    ``g`` the one-hot target; loss ``= 1 - mean_c dice_c`` over ``c = 1..K-1`` (``c = 0..K-1`` with
    ``include_background``, the behaviour before issue 16: ``loss.dice_background``). A class absent from
    both prediction and target scores dice 1 (thanks to ``eps``). Computed by MONAI's ``DiceLoss``
    (``to_onehot_y``, no softmax inside: ``prob`` already is one, ``batch=True``, ``smooth_nr = smooth_dr
    = eps``), which gives these numbers exactly (tests/models/test_losses_terms.py). With ``squared`` the
    denominator is ``Σ p_c² + Σ g_c + eps`` (MONAI's ``squared_pred``; the ``dice_loss`` of the UA-MT / MCF
    code the authors build on squares the prediction).

    Args:
        prob: softmax probabilities ``(B, K, *S)``.
        target: labels ``(B, *S)`` int in ``0..K-1``.
        eps: smoothing of numerator and denominator.
        include_background: also average the background class's Dice.
        squared: square the probabilities in the denominator (``loss.dice_squared``).
    """
    from monai.losses import DiceLoss

    loss = DiceLoss(include_background=include_background, to_onehot_y=True, softmax=False, batch=True,
                    squared_pred=squared, smooth_nr=eps, smooth_dr=eps)
    return loss(prob.float(), target.long().unsqueeze(1))


def confident_foreground_xor(
    prob_a: torch.Tensor, prob_b: torch.Tensor, threshold: float = 0.6
) -> torch.Tensor:
    """Per foreground class, the voxels where exactly one net is confident in that class.

    ``M_c = (p_A[c] >= threshold) XOR (p_B[c] >= threshold)`` for ``c = 1..K-1``. For K = 2 this is the
    authors' "confident foreground in exactly one net" mask (``p_fg >= 0.6``). Inputs ``(B, K, *S)``;
    returns a bool mask ``(B, K-1, *S)`` (no gradient).
    """
    with torch.no_grad():
        return (prob_a[:, 1:] >= threshold) ^ (prob_b[:, 1:] >= threshold)


def label_cr_loss(prob: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``L_cr`` of one net against the **ground-truth label** on the confident-disagreement mask.

    Per foreground class ``c``: ``Σ_{v ∈ M_c} (p[c, v] - [y_v = c])² / |M_c|`` (0 when ``M_c`` is
    empty); the loss is the mean over the K-1 foreground classes. For K = 2 it is the authors' (and
    MCF's) term: the squared error between the foreground probability and the label, on the XOR of the two
    nets' confident-foreground masks, divided by that mask's voxel count. Multi-class choice: one mask
    and one normalisation per foreground class (a voxel confident in class c in one net only counts for
    class c), averaged over the classes like the Dice. Both nets use the same masks; each net's
    probabilities carry the gradient, the label and the mask do not. A grad-connected 0 when every mask
    is empty.

    Args:
        prob: softmax of one net on the labeled part ``(B, K, *S)``.
        target: labels ``(B, *S)`` int in ``0..K-1``.
        mask: ``(B, K-1, *S)`` bool (:func:`confident_foreground_xor`).
    """
    k = prob.shape[1]
    onehot = F.one_hot(target.long(), k).movedim(-1, 1)[:, 1:].to(torch.float32)  # (B, K-1, *S)
    m = mask.detach().to(torch.float32)
    dims = [0] + list(range(2, prob.dim()))
    sq = ((prob[:, 1:].float() - onehot) ** 2 * m).sum(dims)  # (K-1,)
    return (sq / m.sum(dims).clamp_min(1.0)).mean()


def confident_disagreement_mask(
    prob_student: torch.Tensor, prob_teacher: torch.Tensor, threshold: float = 0.6
) -> torch.Tensor:
    """Voxels where the *teacher* alone is confident and the two nets' argmax disagree (``loss.cr_target:
    other_net``, the behaviour before issue 16).

    Confident means ``max_c p_c >= threshold``. Returns a bool mask ``(B, *S)`` (no gradient).
    """
    with torch.no_grad():
        conf_s, arg_s = prob_student.max(dim=1)
        conf_t, arg_t = prob_teacher.max(dim=1)
        return (conf_t >= threshold) & (conf_s < threshold) & (arg_s != arg_t)


def confident_disagreement_loss(
    prob_student: torch.Tensor, prob_teacher: torch.Tensor, threshold: float = 0.6
) -> torch.Tensor:
    """``L_cr`` toward the **other net** (``loss.cr_target: other_net``; not the method's definition).

    The student is pulled toward the detached teacher on ``confident_disagreement_mask(student,
    teacher)``: ``Σ_{v ∈ M} Σ_c (p_s[c, v] - p_t[c, v])² / N`` with ``N`` the number of *all* voxels of
    the batch; a grad-connected 0 when ``M`` is empty. It was the default before issue 16 (chosen because
    dividing by ``|M|`` held the foreground back in short phantom runs, bench/RESULTS.md); the method's
    term is :func:`label_cr_loss`.

    Args:
        prob_student: softmax of the student ``(B, K, *S)``.
        prob_teacher: softmax of the other net ``(B, K, *S)``.
        threshold: confidence threshold on ``max_c p_c`` (paper: 0.6).
    """
    mask = confident_disagreement_mask(prob_student, prob_teacher, threshold)
    sq = ((prob_student - prob_teacher.detach()) ** 2).sum(dim=1)  # (B, *S)
    return (sq * mask).sum() / mask.numel()
