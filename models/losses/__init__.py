"""Loss terms of the dual-network semi-supervised method (all multi-class, K >= 2)."""

from models.losses.combined import DualNetLoss, LossConfig, ModuleSwitches
from models.losses.cross import cosine_consistency, cps_kl_loss, kl_per_voxel
from models.losses.entropy_filter import (
    check_probabilities,
    entropy,
    entropy_filtered_loss,
    joint_pseudo_label,
    percentile,
    reliable_mask,
)
from models.losses.prototype import class_prototypes, prototype_contrastive_loss
from models.losses.ramps import linear_schedule, sigmoid_rampup
from models.losses.supervised import (
    class_balanced_mean,
    class_means,
    confident_disagreement_loss,
    confident_disagreement_mask,
    confident_foreground_xor,
    cross_entropy,
    label_cr_loss,
    soft_dice_loss,
)

__all__ = [
    "DualNetLoss",
    "LossConfig",
    "ModuleSwitches",
    "check_probabilities",
    "class_balanced_mean",
    "class_means",
    "class_prototypes",
    "confident_disagreement_loss",
    "confident_disagreement_mask",
    "confident_foreground_xor",
    "cosine_consistency",
    "cps_kl_loss",
    "cross_entropy",
    "entropy",
    "entropy_filtered_loss",
    "joint_pseudo_label",
    "kl_per_voxel",
    "label_cr_loss",
    "linear_schedule",
    "percentile",
    "prototype_contrastive_loss",
    "reliable_mask",
    "sigmoid_rampup",
    "soft_dice_loss",
]
