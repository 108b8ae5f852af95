"""Run configuration: frozen dataclasses loaded from YAML (``configs/<name>.yaml``).

``load_config("tiny")`` resolves a bare name to ``configs/tiny.yaml`` next to the ``models`` package;
a path (``.yaml``/``.yml`` or containing a separator) is read as given. Unknown keys at any level raise
``ValueError``; so do invalid values. ``config.with_overrides({"iterations": 10, "loss.w_u": 0.5})``
returns a modified copy (dotted keys address nested fields). ``config.to_dict()`` is plain
JSON/YAML-serialisable data (lists, not tuples) that ``TrainConfig.from_dict`` reads back.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from models.losses.combined import LossConfig, ModuleSwitches

AMP_MODES = ("auto", "bf16", "fp16", "off")
LR_SCHEDULES = ("step", "poly", "constant")
INTENSITY_MODES = ("zscore", "clip_zscore", "ct_window")

T = TypeVar("T")


@dataclass(frozen=True)
class NetworkSpec:
    """One network: registry name, base width and bottleneck dropout."""

    name: str = "vnet"
    width: int = 16
    dropout: float = 0.5


@dataclass(frozen=True)
class NetworksConfig:
    """Net A and Net B (names from ``models.networks.available_networks()``)."""

    net_a: NetworkSpec = NetworkSpec(name="resnet_vnet")
    net_b: NetworkSpec = NetworkSpec(name="vnet")


@dataclass(frozen=True)
class OptimizerConfig:
    """SGD hyperparameters (one optimizer per network)."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False


@dataclass(frozen=True)
class LRScheduleConfig:
    """``step``: lr × gamma at each of ``steps``; ``poly``: lr·(1 - it/iterations)^power; ``constant``."""

    kind: str = "step"
    steps: tuple[int, ...] = (2500, 5000)
    gamma: float = 0.1
    power: float = 0.9


@dataclass(frozen=True)
class SamplerConfig:
    """Crop sampling: probability of a foreground-centred labeled crop, random flips."""

    foreground_prob: float = 0.0
    flip: bool = False


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time crop augmentation (models/data/augment.py, MONAI transforms); off unless ``enabled``.

    Each ``*_prob`` is the probability that one crop gets that perturbation: ``affine`` rotates by up to
    ``rotate_deg`` about each axis and scales by a factor in ``scale_range``; ``elastic`` is a 3D elastic
    deformation; ``histogram_shift`` remaps intensities through a random smooth monotonic curve; ``gamma``
    applies a gamma in ``gamma_range`` on the crop's own range; ``contrast`` multiplies by 1 ± up to
    ``contrast_factor`` and adds up to ± ``shift_offset``; ``bias_field`` is a smooth multiplicative field of
    polynomial coefficients up to ``bias_coeff``; ``blur`` a Gaussian of σ in ``blur_sigma`` voxels;
    ``lowres`` a down- then up-sampling by 0.5-1; ``noise`` Gaussian noise of std up to ``noise_std``;
    ``invert`` mirrors the intensities within the crop's range.
    """

    enabled: bool = False
    affine_prob: float = 0.2
    rotate_deg: float = 30.0
    scale_range: tuple[float, float] = (0.7, 1.4)
    elastic_prob: float = 0.0
    histogram_shift_prob: float = 0.3
    gamma_prob: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    contrast_prob: float = 0.15
    contrast_factor: float = 0.25
    shift_offset: float = 0.3
    bias_field_prob: float = 0.2
    bias_coeff: float = 0.3
    blur_prob: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    lowres_prob: float = 0.1
    noise_prob: float = 0.15
    noise_std: float = 0.1
    invert_prob: float = 0.0


@dataclass(frozen=True)
class IntensityConfig:
    """Intensity normalisation (applied by the data pipeline, recorded in the model card).

    ``zscore``: per-volume mean/std; ``clip_zscore``: clip to ``clip_percentiles`` then z-score;
    ``ct_window``: clip HU to ``window`` [low, high] and rescale to [0, 1].
    """

    mode: str = "zscore"
    clip_percentiles: tuple[float, float] | None = None
    window: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.mode not in INTENSITY_MODES:
            raise ValueError(f"intensity.mode must be one of {INTENSITY_MODES}, got {self.mode!r}")
        if self.mode == "ct_window" and (self.window is None or self.window[0] >= self.window[1]):
            raise ValueError("intensity mode 'ct_window' needs window: [low, high] with low < high")
        if self.mode == "clip_zscore" and self.clip_percentiles is None:
            raise ValueError("intensity mode 'clip_zscore' needs clip_percentiles: [low, high]")

    def to_card(self) -> dict[str, object]:
        """The model card's ``intensity`` object: ``mode`` plus the parameters that are set."""
        card: dict[str, object] = {"mode": self.mode}
        if self.clip_percentiles is not None:
            card["clip_percentiles"] = list(self.clip_percentiles)
        if self.window is not None:
            card["window"] = list(self.window)
        return card


@dataclass(frozen=True)
class PreprocessingConfig:
    """Target voxel spacing (mm, array axis order), orientation and intensity normalisation."""

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    orientation: str = "RAS"
    intensity: IntensityConfig = IntensityConfig()


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; see ``configs/*.yaml`` for annotated presets.

    ``num_labeled``: how many of the labeled cases are used as labeled (the first ones); the images of
    the others join the unlabeled pool. ``None`` uses all. ``checkpoint_every``/``log_every`` count
    iterations (0 disables periodic checkpoints; the final one is always written).
    """

    name: str = "custom"
    num_classes: int = 2
    in_channels: int = 1
    patch_size: tuple[int, int, int] = (112, 112, 80)
    batch_labeled: int = 2
    batch_unlabeled: int = 2
    iterations: int = 6000
    num_labeled: int | None = None
    seed: int = 1337
    amp: str = "auto"
    checkpoint_every: int = 500
    log_every: int = 10
    networks: NetworksConfig = NetworksConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    lr_schedule: LRScheduleConfig = LRScheduleConfig()
    loss: LossConfig = LossConfig()
    modules: ModuleSwitches = ModuleSwitches()
    sampler: SamplerConfig = SamplerConfig()
    augment: AugmentConfig = AugmentConfig()
    preprocessing: PreprocessingConfig = PreprocessingConfig()

    def __post_init__(self) -> None:
        errors: list[str] = []
        if self.num_classes < 2:
            errors.append(f"num_classes must be >= 2, got {self.num_classes}")
        if self.in_channels < 1:
            errors.append(f"in_channels must be >= 1, got {self.in_channels}")
        if len(self.patch_size) != 3 or any(p < 16 or p % 16 for p in self.patch_size):
            errors.append(f"patch_size must be 3 sizes divisible by 16, got {list(self.patch_size)}")
        if self.batch_labeled < 1 or self.batch_unlabeled < 0:
            errors.append("batch_labeled must be >= 1 and batch_unlabeled >= 0")
        if self.iterations < 0 or self.checkpoint_every < 0 or self.log_every < 1:
            errors.append("iterations and checkpoint_every must be >= 0, log_every >= 1")
        if self.num_labeled is not None and self.num_labeled < 1:
            errors.append(f"num_labeled must be >= 1 or null, got {self.num_labeled}")
        if self.amp not in AMP_MODES:
            errors.append(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.lr_schedule.kind not in LR_SCHEDULES:
            errors.append(f"lr_schedule.kind must be one of {LR_SCHEDULES}, got {self.lr_schedule.kind!r}")
        if not 0.0 <= self.sampler.foreground_prob <= 1.0:
            errors.append("sampler.foreground_prob must be in [0, 1]")
        aug = self.augment
        probs = [getattr(aug, f.name) for f in dataclasses.fields(aug) if f.name.endswith("_prob")]
        if any(not 0.0 <= p <= 1.0 for p in probs):
            errors.append("augment.*_prob must be in [0, 1]")
        ranges = (aug.scale_range, aug.gamma_range)
        if any(not 0 < low <= high for low, high in ranges):
            errors.append("augment.scale_range and augment.gamma_range must be 0 < low <= high")
        if errors:
            raise ValueError("invalid training config: " + "; ".join(errors))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from plain data (e.g. parsed YAML); unknown keys or wrong types raise ``ValueError``."""
        return _build(cls, data, "")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists) that :meth:`from_dict` accepts."""
        return _plain(dataclasses.asdict(self))

    def with_overrides(self, overrides: Mapping[str, Any]) -> TrainConfig:
        """Copy with ``overrides`` applied; keys may be dotted (``"loss.w_u"``); dict values merge."""
        data = self.to_dict()
        for key, value in overrides.items():
            _set_path(data, key.split("."), value, key)
        return TrainConfig.from_dict(data)


def configs_dir() -> Path:
    """``configs/`` beside the ``models`` package (the repository's preset folder)."""
    return Path(__file__).resolve().parents[2] / "configs"


def available_configs(directory: Path | None = None) -> list[str]:
    """Names of the presets in ``directory`` (default :func:`configs_dir`)."""
    d = directory or configs_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def resolve_config_path(path_or_name: str | Path, directory: Path | None = None) -> Path:
    """A bare name -> ``<configs>/<name>.yaml``; anything path-like is returned as a ``Path``."""
    text = str(path_or_name)
    if isinstance(path_or_name, Path) or text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text:
        return Path(path_or_name)
    return (directory or configs_dir()) / f"{text}.yaml"


def load_config(path_or_name: str | Path, directory: Path | None = None) -> TrainConfig:
    """Load a :class:`TrainConfig` from a YAML path or a preset name (``"tiny"``, ``"la_10pct"``...).

    Raises:
        FileNotFoundError: no such file (the message lists the presets found).
        ValueError: unknown keys, wrong types or invalid values.
    """
    path = resolve_config_path(path_or_name, directory)
    if not path.is_file():
        names = available_configs(directory)
        raise FileNotFoundError(
            f"training config {str(path_or_name)!r} not found at {path}; "
            f"presets in {directory or configs_dir()}: {', '.join(names) or 'none'}"
        )
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    data.setdefault("name", path.stem)
    return TrainConfig.from_dict(data)


# ---------------------------------------------------------------- generic dataclass <-> dict helpers


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _set_path(data: dict[str, Any], parts: list[str], value: Any, full: str) -> None:
    head = parts[0]
    if head not in data:
        raise ValueError(f"unknown config key {full!r} (valid here: {', '.join(sorted(data))})")
    if len(parts) > 1:
        if not isinstance(data[head], dict):
            raise ValueError(f"config key {head!r} in {full!r} is not a section")
        _set_path(data[head], parts[1:], value, full)
    elif isinstance(data[head], dict) and isinstance(value, Mapping):
        for k, v in value.items():
            _set_path(data[head], [k], v, f"{full}.{k}")
    else:
        data[head] = _plain(value)


def _build(cls: type[T], data: Any, where: str) -> T:
    if not isinstance(data, Mapping):
        raise ValueError(f"config section {where or '<root>'!r} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(repr(f'{where}{k}') for k in unknown)}; "
            f"valid: {', '.join(sorted(names))}"
        )
    kwargs = {k: _convert(hints[k], v, f"{where}{k}") for k, v in data.items()}
    return cls(**kwargs)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build(tp, value, f"{where}.")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        if len(value) != len(args):
            raise ValueError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, where) for a, v in zip(args, value, strict=True))
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        try:  # YAML 1.1 reads "1e-4" as a string
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    raise ValueError(f"{where}: unsupported config type {tp!r}")  # pragma: no cover
