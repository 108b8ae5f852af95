"""The total dual-network objective (Σ supervised + w_u(t)·CCE + λ_c(t)·contrast).

Batch layout: both nets see the same batch of ``B_l + B_u`` crops; the first ``B_l`` are labeled
(``label (B_l, *S)``), the rest unlabeled. Per net ``n ∈ {a, b}`` with ``p = softmax(logits)``:

- supervised (labeled part): ``CE + Dice + α·L_cr`` (:mod:`models.losses.supervised`); ``L_cr``
  pulls net n toward the other net where only the other is confident and they disagree.
- CCE (unlabeled part), weighted by ``w_u(t) = w_u · sigmoid_rampup(t, w_u_rampup)``:
  ``cps_n + kl_n`` (other net's hard pseudo-label, ``exp(-D)``-weighted CE + mean D; with
  ``pseudo_dice`` also the soft Dice of net n against that pseudo-label, as the supervised part pairs
  CE with Dice),
  ``ef_n`` (entropy-filtered CE toward the joint pseudo-label on n's reliable voxels, q(t)-th
  percentile, ``q`` linear from ``q_start`` to ``q_end`` over the run; per pseudo-class with
  ``classwise_q``) and the shared ``cosine`` term. With ``balanced_pseudo`` the CE of ``cps_n`` and
  ``ef_n`` is averaged per pseudo-class, then over the pseudo-classes present (not in the paper).
- contrast (unlabeled part), weighted by ``λ_c(t) = lambda_c · sigmoid_rampup(t, lambda_c_rampup)``:
  prototype InfoNCE on net n's features, with the joint pseudo-label and n's reliability mask.

Each module is switched by :class:`ModuleSwitches`; a disabled module is neither computed nor logged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.losses.cross import cosine_consistency, cps_kl_loss
from models.losses.entropy_filter import entropy_filtered_loss, joint_pseudo_label, reliable_mask
from models.losses.prototype import prototype_contrastive_loss
from models.losses.ramps import linear_schedule, sigmoid_rampup
from models.losses.supervised import confident_disagreement_loss, cross_entropy, soft_dice_loss


@dataclass(frozen=True)
class ModuleSwitches:
    """Which parts of the method are on (ablation). CE + Dice are always on."""

    supervised_cr: bool = True
    cps_kl: bool = True
    entropy_filter: bool = True
    cosine: bool = True
    prototype: bool = True


@dataclass(frozen=True)
class LossConfig:
    """Weights, thresholds and schedules of the objective (ramp lengths in iterations)."""

    alpha_cr: float = 0.5
    cr_threshold: float = 0.6
    w_u: float = 1.0
    w_u_rampup: int = 0
    lambda_c: float = 0.1
    lambda_c_rampup: int = 0
    q_start: float = 20.0
    q_end: float = 20.0
    classwise_q: bool = False
    pseudo_dice: bool = False
    balanced_pseudo: bool = False
    temperature: float = 0.1
    max_samples: int = 2048
    dice_eps: float = 1e-5

    def __post_init__(self) -> None:
        if not 0.0 < self.cr_threshold <= 1.0:
            raise ValueError(f"cr_threshold must be in (0, 1], got {self.cr_threshold}")
        for name in ("q_start", "q_end"):
            value = getattr(self, name)
            if not 0.0 <= value <= 100.0:
                raise ValueError(f"{name} must be in [0, 100], got {value}")
        if self.temperature <= 0 or self.max_samples < 1:
            raise ValueError("temperature must be > 0 and max_samples >= 1")


class DualNetLoss:
    """Callable computing the total loss and every term's value.

    ``__call__(out_a, out_b, label, iteration, generator)`` with ``out_n = (logits (B, K, *S),
    features (B, C, *S))`` of net n on the batch ``(B_l + B_u)`` and ``label (B_l, *S)`` int returns
    ``(total (0-d tensor with grad), terms: dict[str, float])``.
    """

    def __init__(
        self, config: LossConfig, modules: ModuleSwitches, num_classes: int, total_iterations: int
    ) -> None:
        self.config = config
        self.modules = modules
        self.num_classes = num_classes
        self.total_iterations = total_iterations

    def schedule(self, iteration: int) -> dict[str, float]:
        """``{"w_u", "lambda_c", "q"}`` at ``iteration``."""
        c = self.config
        return {
            "w_u": c.w_u * sigmoid_rampup(iteration, c.w_u_rampup),
            "lambda_c": c.lambda_c * sigmoid_rampup(iteration, c.lambda_c_rampup),
            "q": linear_schedule(iteration, self.total_iterations, c.q_start, c.q_end),
        }

    def __call__(
        self,
        out_a: tuple[torch.Tensor, torch.Tensor],
        out_b: tuple[torch.Tensor, torch.Tensor],
        label: torch.Tensor,
        iteration: int,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """See the class docstring. Logits are cast to float32 before any softmax."""
        c, m = self.config, self.modules
        logits = {"a": out_a[0].float(), "b": out_b[0].float()}
        feats = {"a": out_a[1], "b": out_b[1]}
        probs = {n: torch.softmax(x, dim=1) for n, x in logits.items()}
        other = {"a": "b", "b": "a"}
        n_l = label.shape[0]
        terms: dict[str, torch.Tensor] = {}

        # Supervised, per net, on the labeled part.
        sup = logits["a"].new_zeros(())
        for n in ("a", "b"):
            if n_l == 0:
                break
            terms[f"sup_ce_{n}"] = cross_entropy(logits[n][:n_l], label)
            terms[f"sup_dice_{n}"] = soft_dice_loss(probs[n][:n_l], label, c.dice_eps)
            sup = sup + terms[f"sup_ce_{n}"] + terms[f"sup_dice_{n}"]
            if m.supervised_cr:
                terms[f"sup_cr_{n}"] = confident_disagreement_loss(
                    probs[n][:n_l], probs[other[n]][:n_l], c.cr_threshold
                )
                sup = sup + c.alpha_cr * terms[f"sup_cr_{n}"]

        sched = self.schedule(iteration)
        cce = logits["a"].new_zeros(())
        contrast = logits["a"].new_zeros(())
        has_unlabeled = logits["a"].shape[0] > n_l
        if has_unlabeled:
            lu = {n: x[n_l:] for n, x in logits.items()}
            pu = {n: x[n_l:] for n, x in probs.items()}
            if m.cps_kl:
                for n in ("a", "b"):
                    terms[f"cps_{n}"], terms[f"kl_{n}"] = cps_kl_loss(lu[n], pu[other[n]], c.balanced_pseudo)
                    cce = cce + terms[f"cps_{n}"] + terms[f"kl_{n}"]
                    if c.pseudo_dice:  # class-balanced companion of the pseudo-label CE
                        terms[f"cps_dice_{n}"] = soft_dice_loss(
                            pu[n], pu[other[n]].detach().argmax(dim=1), c.dice_eps)
                        cce = cce + terms[f"cps_dice_{n}"]
            if m.entropy_filter or m.prototype:
                pseudo = joint_pseudo_label(pu["a"], pu["b"])
                by_class = pseudo if c.classwise_q else None
                reliable = {n: reliable_mask(pu[n], sched["q"], by_class)[0] for n in ("a", "b")}
                for n in ("a", "b"):
                    if m.entropy_filter:
                        terms[f"ef_{n}"] = entropy_filtered_loss(
                            lu[n], pseudo, reliable[n], c.balanced_pseudo)
                        cce = cce + terms[f"ef_{n}"]
                    if m.prototype:
                        terms[f"contrast_{n}"] = prototype_contrastive_loss(
                            feats[n][n_l:], pseudo, reliable[n], self.num_classes,
                            c.temperature, c.max_samples, generator,
                        )
                        contrast = contrast + terms[f"contrast_{n}"]
            if m.cosine:
                terms["cosine"] = cosine_consistency(pu["a"], pu["b"])
                cce = cce + terms["cosine"]

        total = sup + sched["w_u"] * cce + sched["lambda_c"] * contrast
        values = {k: float(v.detach()) for k, v in terms.items()}
        values["supervised"] = float(sup.detach())
        if has_unlabeled and (m.cps_kl or m.entropy_filter or m.cosine):
            values["cce"] = float(cce.detach())
            values["w_u"] = sched["w_u"]
        if has_unlabeled and m.prototype:
            values["contrast"] = float(contrast.detach())
            values["lambda_c"] = sched["lambda_c"]
        if has_unlabeled and (m.entropy_filter or m.prototype):
            values["q"] = sched["q"]
        values["total"] = float(total.detach())
        return total, values
