"""Configuration of the dual-network objective: module switches, weights, thresholds and schedules.

Defaults are the method's definition (DESIGN §4, the authors' released training code); the options that
keep an earlier behaviour of this code base, or that are not in the paper, say so.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.losses.ramps import sigmoid_rampup

CR_TARGETS = ("label", "other_net")
TEACHERS = ("symmetric", "winner")


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
    """Weights, thresholds and schedules of the objective (ramp lengths in iterations).

    - ``alpha_cr``, ``cr_threshold``: weight and confidence threshold of ``L_cr`` (paper: 0.5, 0.6).
    - ``cr_target``: ``label`` (the method: squared error against the ground truth on the XOR of the two
      nets' confident-foreground masks, ÷ the mask count) or ``other_net`` (before issue 16: toward the
      other net's probabilities where only it is confident, ÷ all voxels).
    - ``dice_background``: also average the background's Dice in the supervised (and ``pseudo_dice``)
      Dice; off = foreground-only, the method's Dice. ``dice_squared``: ``Σ p²`` instead of ``Σ p`` in its
      denominator (the UA-MT / MCF ``dice_loss`` the authors' code imports squares it; off by default, as
      before issue 16).
    - ``w_u``: weight of the CCE terms (CPS + KL, entropy filter, cosine; authors: 1.0), times
      ``sigmoid_rampup(t, w_u_rampup)`` (0 = no ramp, the authors' code).
    - ``lambda_c``: weight of the prototype contrast (authors: 0.1), times ``sigmoid_rampup(t,
      lambda_c_rampup)``; ``lambda_c_rampup: null`` ramps over the whole run (the authors' code ramps
      0.1·sigmoid_rampup(iter/150, 40) over their 6000 iterations).
    - ``unlabeled_warmup``: share of the iterations at the start during which only the supervised terms
      count (``w_u = lambda_c = 0``; the unlabeled terms are still computed and logged).
    - ``q_start``/``q_end``: entropy percentile, linear over the run; ``classwise_q``: the percentile
      per pseudo-class (the method; off = one percentile over all voxels, before issue 16).
    - ``teacher``: ``symmetric`` (both nets learn from each other every iteration, DESIGN) or ``winner``
      (the authors' code: the net with the lower labeled Dice loss is the teacher that iteration; only
      the other one receives the contrastive, KL-rectified CPS and cosine terms).
    - ``pseudo_dice``, ``balanced_pseudo``: not in the paper (see :mod:`models.losses.combined`).
    - ``temperature``, ``max_samples``: InfoNCE temperature and the cap on anchors per net.
    """

    alpha_cr: float = 0.5
    cr_threshold: float = 0.6
    cr_target: str = "label"
    dice_background: bool = False
    dice_squared: bool = False
    w_u: float = 1.0
    w_u_rampup: int = 0
    lambda_c: float = 0.1
    lambda_c_rampup: int | None = None
    unlabeled_warmup: float = 0.1
    q_start: float = 20.0
    q_end: float = 20.0
    classwise_q: bool = True
    teacher: str = "symmetric"
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
        if self.cr_target not in CR_TARGETS:
            raise ValueError(f"cr_target must be one of {CR_TARGETS}, got {self.cr_target!r}")
        if self.teacher not in TEACHERS:
            raise ValueError(f"teacher must be one of {TEACHERS}, got {self.teacher!r}")
        if not 0.0 <= self.unlabeled_warmup < 1.0:
            raise ValueError(f"unlabeled_warmup must be in [0, 1), got {self.unlabeled_warmup}")

    def warmup_iterations(self, total_iterations: int) -> int:
        """Number of labeled-only iterations at the start of a run of ``total_iterations``."""
        return int(round(self.unlabeled_warmup * max(total_iterations, 0)))

    def weights(self, iteration: int, total_iterations: int) -> tuple[float, float]:
        """``(w_u(t), lambda_c(t))`` at the 0-based ``iteration``: 0 during the warm-up, then the ramps
        (counted from iteration 0, as the authors' code does)."""
        if iteration < self.warmup_iterations(total_iterations):
            return 0.0, 0.0
        ramp_c = total_iterations if self.lambda_c_rampup is None else self.lambda_c_rampup
        return (self.w_u * sigmoid_rampup(iteration, self.w_u_rampup),
                self.lambda_c * sigmoid_rampup(iteration, ramp_c))
