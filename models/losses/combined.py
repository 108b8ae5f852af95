"""The total dual-network objective (Σ supervised + w_u(t)·CCE + λ_c(t)·contrast).

Batch layout: both nets see the same batch of ``B_l + B_u`` crops; the first ``B_l`` are labeled
(``label (B_l, *S)``), the rest unlabeled. Per net ``n ∈ {a, b}`` with ``p = softmax(logits)``:

- supervised (labeled part): ``CE + Dice + α·L_cr`` (:mod:`models.losses.supervised`): Dice over the
  foreground classes; ``L_cr`` the squared error of net n's foreground probabilities against the label
  on the XOR of both nets' confident-foreground masks, ÷ the mask count (``cr_target: other_net``: the
  pull toward the other net of before issue 16).
- CCE (unlabeled part), weighted by ``w_u(t)`` (:meth:`LossConfig.weights`: 0 during the labeled-only
  warm-up, then ``w_u · sigmoid_rampup(t, w_u_rampup)``):
  ``cps_n + kl_n`` (other net's hard pseudo-label, ``exp(-D)``-weighted CE + mean D; with
  ``pseudo_dice`` also the soft Dice of net n against that pseudo-label),
  ``ef_n`` (entropy-filtered CE toward the joint pseudo-label on n's reliable voxels, q(t)-th
  percentile per pseudo-class, ``q`` linear from ``q_start`` to ``q_end``) and the ``cosine`` term.
  With ``balanced_pseudo`` the CE of ``cps_n`` and ``ef_n`` is averaged per pseudo-class, then over the
  pseudo-classes present (not in the paper).
- contrast (unlabeled part), weighted by ``λ_c(t)``: prototype InfoNCE on net n's features, with the
  joint pseudo-label and n's reliability mask.

Teacher (``loss.teacher``): ``symmetric`` — both directions of CPS and contrast, cosine with gradient
into both nets; ``winner`` — the net with the lower labeled Dice loss this iteration is the teacher: only
the other net (the student) gets ``cps``/``kl``/``cps_dice``, ``contrast`` and the cosine term (the
teacher's probabilities detached); both nets keep their entropy-filtered term (as in the authors' code).
The log then holds ``teacher`` = 0 (net A) or 1 (net B).

Each module is switched by :class:`ModuleSwitches`; a disabled module is neither computed nor logged.
A **control** run (every unlabeled weight 0, ``w_u = lambda_c = 0``) still forwards the unlabeled crops
through both nets (the trainer forwards the whole batch), so BatchNorm sees the same batches.
"""

from __future__ import annotations

import torch

from models.losses.config import LossConfig, ModuleSwitches
from models.losses.cross import cosine_consistency, cps_kl_loss
from models.losses.entropy_filter import entropy_filtered_loss, joint_pseudo_label, reliable_mask
from models.losses.prototype import prototype_contrastive_loss
from models.losses.ramps import linear_schedule
from models.losses.supervised import (
    confident_disagreement_loss,
    confident_foreground_xor,
    cross_entropy,
    label_cr_loss,
    soft_dice_loss,
)

__all__ = ["DualNetLoss", "LossConfig", "ModuleSwitches"]

OTHER = {"a": "b", "b": "a"}


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
        w_u, lambda_c = c.weights(iteration, self.total_iterations)
        return {"w_u": w_u, "lambda_c": lambda_c,
                "q": linear_schedule(iteration, self.total_iterations, c.q_start, c.q_end)}

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
        n_l = label.shape[0]
        terms: dict[str, torch.Tensor] = {}
        sup = self._supervised(logits, probs, label, terms)

        sched = self.schedule(iteration)
        cce = logits["a"].new_zeros(())
        contrast = logits["a"].new_zeros(())
        has_unlabeled = logits["a"].shape[0] > n_l
        teacher = None
        if c.teacher == "winner" and n_l > 0:  # ties go to net A
            dice_a, dice_b = float(terms["sup_dice_a"].detach()), float(terms["sup_dice_b"].detach())
            teacher = "a" if dice_a <= dice_b else "b"
        students = ("a", "b") if teacher is None else (OTHER[teacher],)
        if has_unlabeled:
            lu = {n: x[n_l:] for n, x in logits.items()}
            pu = {n: x[n_l:] for n, x in probs.items()}
            if m.cps_kl:
                for n in students:
                    terms[f"cps_{n}"], terms[f"kl_{n}"] = cps_kl_loss(lu[n], pu[OTHER[n]], c.balanced_pseudo)
                    cce = cce + terms[f"cps_{n}"] + terms[f"kl_{n}"]
                    if c.pseudo_dice:  # class-balanced companion of the pseudo-label CE
                        terms[f"cps_dice_{n}"] = soft_dice_loss(
                            pu[n], pu[OTHER[n]].detach().argmax(dim=1), c.dice_eps, c.dice_background,
                            c.dice_squared)
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
                    if m.prototype and n in students:
                        terms[f"contrast_{n}"] = prototype_contrastive_loss(
                            feats[n][n_l:], pseudo, reliable[n], self.num_classes,
                            c.temperature, c.max_samples, generator,
                        )
                        contrast = contrast + terms[f"contrast_{n}"]
            if m.cosine:
                if teacher is None:
                    terms["cosine"] = cosine_consistency(pu["a"], pu["b"])
                else:
                    terms["cosine"] = cosine_consistency(pu[students[0]], pu[teacher].detach())
                cce = cce + terms["cosine"]

        total = sup + sched["w_u"] * cce + sched["lambda_c"] * contrast
        values = {k: float(v.detach()) for k, v in terms.items()}
        values["supervised"] = float(sup.detach())
        if teacher is not None:
            values["teacher"] = 0.0 if teacher == "a" else 1.0
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

    def _supervised(self, logits: dict[str, torch.Tensor], probs: dict[str, torch.Tensor],
                    label: torch.Tensor, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """CE + Dice + α·L_cr of both nets on the labeled part (``label (B_l, *S)``); fills ``terms``."""
        c, n_l = self.config, label.shape[0]
        sup = logits["a"].new_zeros(())
        if n_l == 0:
            return sup
        xor = None
        if self.modules.supervised_cr and c.cr_target == "label":
            xor = confident_foreground_xor(probs["a"][:n_l], probs["b"][:n_l], c.cr_threshold)
        for n in ("a", "b"):
            terms[f"sup_ce_{n}"] = cross_entropy(logits[n][:n_l], label)
            terms[f"sup_dice_{n}"] = soft_dice_loss(probs[n][:n_l], label, c.dice_eps, c.dice_background,
                                                    c.dice_squared)
            sup = sup + terms[f"sup_ce_{n}"] + terms[f"sup_dice_{n}"]
            if not self.modules.supervised_cr:
                continue
            if xor is not None:
                terms[f"sup_cr_{n}"] = label_cr_loss(probs[n][:n_l], label, xor)
            else:
                terms[f"sup_cr_{n}"] = confident_disagreement_loss(
                    probs[n][:n_l], probs[OTHER[n]][:n_l], c.cr_threshold)
            sup = sup + c.alpha_cr * terms[f"sup_cr_{n}"]
        return sup
