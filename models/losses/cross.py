"""Cross pseudo supervision with KL-based dynamic weighting, and cosine consistency.

Shapes: ``logits``/``prob`` ``(B, K, *S)``; voxel maps ``(B, *S)``. Computed in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.losses.supervised import class_balanced_mean


def kl_per_voxel(prob_teacher: torch.Tensor, logits_student: torch.Tensor) -> torch.Tensor:
    """``D = KL(sg(p_t) ‖ p_s) = Σ_c p_t (log p_t - log p_s)`` per voxel -> ``(B, *S)``.

    ``prob_teacher (B, K, *S)`` is detached; the gradient flows into ``logits_student (B, K, *S)``.
    ``0 · log 0`` is taken as 0.
    """
    p_t = prob_teacher.detach().float()
    log_p_s = F.log_softmax(logits_student.float(), dim=1)
    return (torch.xlogy(p_t, p_t) - p_t * log_p_s).sum(dim=1)


def cps_kl_loss(
    logits_student: torch.Tensor, prob_teacher: torch.Tensor, balanced: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross pseudo supervision of the student by the teacher, rectified by their disagreement.

    - pseudo-label ``ŷ = argmax_c p_t`` (detached);
    - ``D = KL(sg(p_t) ‖ p_s)`` per voxel (:func:`kl_per_voxel`);
    - weighted CE: ``mean_v exp(-D_v) · CE(logits_s[v], ŷ_v)`` with the weights ``exp(-D)`` detached;
    - regulariser: ``mean_v D_v`` — keeps its gradient into the student.

    Args:
        logits_student: ``(B, K, *S)`` — receives gradient from both returned terms.
        prob_teacher: the other net's softmax ``(B, K, *S)`` — never receives gradient.
        balanced: average the weighted CE per pseudo-class first, then over the pseudo-classes present
            (:func:`~models.losses.supervised.class_balanced_mean`), so a small foreground class is not
            outweighed by the background (not in the paper; ``loss.balanced_pseudo``).

    Returns:
        ``(weighted_ce, mean_kl)`` scalars; the CCE term of this direction is their sum.
    """
    logits = logits_student.float()
    with torch.no_grad():
        pseudo = prob_teacher.argmax(dim=1)
    d = kl_per_voxel(prob_teacher, logits)
    weights = torch.exp(-d).detach()
    ce = F.cross_entropy(logits, pseudo, reduction="none")  # (B, *S)
    if balanced:
        return class_balanced_mean(weights * ce, pseudo, logits.shape[1]), d.mean()
    return (weights * ce).mean(), d.mean()


def cosine_consistency(prob_a: torch.Tensor, prob_b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``mean_v (1 - cos(p_A[:, v], p_B[:, v]))`` over the class axis; both inputs ``(B, K, *S)``.

    Symmetric: both nets receive gradient (neither side is detached).
    """
    return (1.0 - F.cosine_similarity(prob_a.float(), prob_b.float(), dim=1, eps=eps)).mean()
