"""Model package: ``weights.safetensors`` (both nets) + ``model.json`` (the card), as a folder or a .zip.

Loading never unpickles anything: weights are read with safetensors, the card with json, and a zip is
read in memory after its entries are checked (exactly the two files, no paths). The card's
``content_hash`` is the sha256 of ``weights.safetensors`` and is verified on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from models.data.transforms import validate_intensity_spec

WEIGHTS_FILE = "weights.safetensors"
CARD_FILE = "model.json"
FORMAT_VERSION = 1
PACKAGE_FILES = frozenset({WEIGHTS_FILE, CARD_FILE})

NetworkFactory = Callable[..., nn.Module]


class PackageError(ValueError):
    """An invalid card, a corrupted / tampered package, or an unsafe zip."""


def _require(mapping: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(mapping, Mapping):
        raise PackageError(f"model card: {where} must be an object, got {type(mapping).__name__}")
    missing = [k for k in keys if k not in mapping]
    if missing:
        raise PackageError(f"model card: {where} is missing required key(s) {missing}")


def _validate_code(code: Any, where: str) -> None:
    _require(code, ("code", "scheme", "meaning"), where)


def _positive_numbers(values: Any, n: int, where: str, integer: bool = False) -> None:
    ok = isinstance(values, list | tuple) and len(values) == n
    ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in values)
    if ok and integer:
        ok = all(float(v).is_integer() for v in values)
    if not ok:
        kind = "positive integers" if integer else "positive numbers"
        raise PackageError(f"model card: {where} must be {n} {kind}, got {values!r}")


@dataclass
class ModelCard:
    """The ``model.json`` card (docs/contracts.md, "Model package").

    ``created_at`` and ``content_hash`` are filled by :func:`save_package`; the other fields are
    validated by :meth:`validate` (called by the constructor).
    """

    name: str
    version: str
    architecture: dict[str, Any]
    classes: list[dict[str, Any]]
    preprocessing: dict[str, Any]
    patch_size: list[int]
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    parent_version: str | None = None
    created_at: str | None = None
    content_hash: str | None = None
    format_version: int = FORMAT_VERSION

    REQUIRED_KEYS: ClassVar[tuple[str, ...]] = (
        "format_version", "name", "version", "architecture", "classes", "preprocessing", "patch_size",
        "training", "metrics", "parent_version",
    )  # fmt: skip
    SAVED_KEYS: ClassVar[tuple[str, ...]] = ("created_at", "content_hash")

    def __post_init__(self) -> None:
        self.validate()
        self.patch_size = [int(v) for v in self.patch_size]

    # ------------------------------------------------------------------ properties
    @property
    def num_classes(self) -> int:
        return int(self.architecture["num_classes"])

    @property
    def in_channels(self) -> int:
        return int(self.architecture["in_channels"])

    @property
    def spacing(self) -> tuple[float, float, float]:
        s = self.preprocessing["spacing"]
        return float(s[0]), float(s[1]), float(s[2])

    @property
    def patch(self) -> tuple[int, int, int]:
        return self.patch_size[0], self.patch_size[1], self.patch_size[2]

    # ------------------------------------------------------------------ validation / (de)serialisation
    def validate(self) -> None:
        """Raise :class:`PackageError` naming the first problem found."""
        if self.format_version != FORMAT_VERSION:
            raise PackageError(f"model card: unsupported format_version {self.format_version!r}")
        for key in ("name", "version"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise PackageError(f"model card: {key} must be a non-empty string")
        arch = self.architecture
        _require(arch, ("in_channels", "num_classes", "net_a", "net_b"), "architecture")
        for key in ("in_channels", "num_classes"):
            if not isinstance(arch[key], int) or arch[key] < 1:
                raise PackageError(f"model card: architecture.{key} must be a positive integer")
        if arch["num_classes"] < 2:
            raise PackageError("model card: architecture.num_classes must be >= 2 (binary is 2)")
        for net in ("net_a", "net_b"):
            _require(arch[net], ("name", "width"), f"architecture.{net}")
            if not isinstance(arch[net]["width"], int) or arch[net]["width"] < 1:
                raise PackageError(f"model card: architecture.{net}.width must be a positive integer")
        if not isinstance(self.classes, list) or len(self.classes) != arch["num_classes"]:
            raise PackageError("model card: classes must list exactly num_classes entries")
        for i, cls in enumerate(self.classes):
            _require(cls, ("index", "name", "category", "type", "color"), f"classes[{i}]")
            if cls["index"] != i:
                raise PackageError(f"model card: classes[{i}].index must be {i} (0 = background)")
            _validate_code(cls["category"], f"classes[{i}].category")
            _validate_code(cls["type"], f"classes[{i}].type")
            color = cls["color"]
            if not (
                isinstance(color, list | tuple) and len(color) == 3 and all(0 <= int(c) <= 255 for c in color)
            ):
                raise PackageError(f"model card: classes[{i}].color must be [r, g, b] in 0..255")
        _require(self.preprocessing, ("spacing", "orientation", "intensity"), "preprocessing")
        _positive_numbers(self.preprocessing["spacing"], 3, "preprocessing.spacing")
        if self.preprocessing["orientation"] != "RAS":
            raise PackageError("model card: preprocessing.orientation must be 'RAS'")
        try:
            validate_intensity_spec(self.preprocessing["intensity"])
        except ValueError as exc:
            raise PackageError(f"model card: preprocessing.intensity: {exc}") from exc
        _positive_numbers(self.patch_size, 3, "patch_size", integer=True)
        if not isinstance(self.training, Mapping) or not isinstance(self.metrics, Mapping):
            raise PackageError("model card: training and metrics must be objects")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with every contract key."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, require_saved: bool = False) -> ModelCard:
        """Parse and validate a card; ``require_saved`` also demands ``created_at`` and ``content_hash``."""
        keys = cls.REQUIRED_KEYS + (cls.SAVED_KEYS if require_saved else ())
        _require(data, keys, "the card")
        known = set(cls.REQUIRED_KEYS) | set(cls.SAVED_KEYS)
        return cls(**{k: data[k] for k in known if k in data})


@dataclass
class ModelPackage:
    """A loaded package: both nets in eval mode on the requested device."""

    card: ModelCard
    net_a: nn.Module
    net_b: nn.Module
    path: Path

    @property
    def content_hash(self) -> str:
        assert self.card.content_hash is not None
        return self.card.content_hash


# ---------------------------------------------------------------------------------------------- saving
def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _state_tensors(net: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}


def save_package(out_dir: str | Path, net_a: nn.Module, net_b: nn.Module, card: ModelCard) -> Path:
    """Write ``weights.safetensors`` and ``model.json`` into ``out_dir`` (created if needed).

    ``card.created_at`` (UTC ISO 8601) and ``card.content_hash`` (sha256 of the weights file) are set
    on the given card. Files are written atomically (temp file + rename).

    Returns:
        The package folder.
    """
    card.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = save_safetensors_bytes(
        {**_state_tensors(net_a, "net_a."), **_state_tensors(net_b, "net_b.")},
        metadata={"format": "pt", "name": card.name, "version": card.version},
    )
    card.content_hash = hashlib.sha256(weights).hexdigest()
    card.created_at = datetime.now(UTC).isoformat(timespec="seconds")
    _atomic_write(out / WEIGHTS_FILE, weights)
    _atomic_write(out / CARD_FILE, (json.dumps(card.to_dict(), indent=2) + "\n").encode())
    return out


def rewrite_card(package_dir: str | Path, card: ModelCard) -> Path:
    """Replace the ``model.json`` of a package *folder* (weights untouched, so ``content_hash`` stays)."""
    card.validate()
    path = Path(package_dir) / CARD_FILE
    if not path.is_file():
        raise PackageError(f"{package_dir} is not a package folder (no {CARD_FILE})")
    _atomic_write(path, (json.dumps(card.to_dict(), indent=2) + "\n").encode())
    return path


def zip_package(package_dir: str | Path, out_zip: str | Path) -> Path:
    """Zip a package folder: the two files at the archive root, nothing else."""
    src = Path(package_dir)
    for name in PACKAGE_FILES:
        if not (src / name).is_file():
            raise PackageError(f"{src} is not a package: {name} missing")
    out = Path(out_zip)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for name in sorted(PACKAGE_FILES):
                zf.write(src / name, arcname=name)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


# --------------------------------------------------------------------------------------------- loading
def _check_zip_entries(zf: zipfile.ZipFile) -> None:
    names = [info.filename for info in zf.infolist()]
    for name in names:
        if name.startswith(("/", "\\")) or "\\" in name or ".." in name.split("/") or ":" in name:
            raise PackageError(f"unsafe path in package zip: {name!r}")
    if len(names) != len(set(names)) or set(names) != PACKAGE_FILES:
        raise PackageError(f"package zip must hold exactly {sorted(PACKAGE_FILES)} at its root, got {names}")


def _read_package_files(path: Path) -> tuple[bytes, bytes]:
    """``(card bytes, weights bytes)`` of a package folder or zip."""
    if path.is_dir():
        for name in PACKAGE_FILES:
            if not (path / name).is_file():
                raise PackageError(f"{path} is not a package: {name} missing")
        return (path / CARD_FILE).read_bytes(), (path / WEIGHTS_FILE).read_bytes()
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            _check_zip_entries(zf)
            return zf.read(CARD_FILE), zf.read(WEIGHTS_FILE)
    raise PackageError(f"{path} is neither a package folder nor a zip")


def package_hash(path: str | Path) -> str:
    """sha256 (hex) of the package's ``weights.safetensors`` (folder or zip): its content hash."""
    p = Path(path)
    if p.is_dir():
        digest = hashlib.sha256()
        with open(p / WEIGHTS_FILE, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()
    return hashlib.sha256(_read_package_files(p)[1]).hexdigest()


def read_card(path: str | Path) -> ModelCard:
    """The validated card of a package folder or zip (weights are not loaded or verified)."""
    card_bytes, _ = _read_package_files(Path(path))
    return _parse_card(card_bytes)


def _parse_card(card_bytes: bytes) -> ModelCard:
    try:
        data = json.loads(card_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"model.json is not valid JSON: {exc}") from exc
    return ModelCard.from_dict(data, require_saved=True)


def _default_factory() -> NetworkFactory:
    try:
        from models.networks.registry import build_network
    except ImportError:  # pragma: no cover - depends on how models.networks exports it
        from models.networks import build_network  # type: ignore[attr-defined,no-redef]
    return build_network


def _build_net(factory: NetworkFactory, card: ModelCard, which: str) -> nn.Module:
    spec = dict(card.architecture[which])
    name, width = spec.pop("name"), spec.pop("width")
    return factory(name, in_channels=card.in_channels, num_classes=card.num_classes, width=width, **spec)


def load_package(
    path: str | Path,
    device: torch.device | str = "cpu",
    *,
    verify_hash: bool = True,
    build_network: NetworkFactory | None = None,
) -> ModelPackage:
    """Load a package folder or zip: validate the card, verify the hash, build and load both nets.

    Args:
        path: package folder or .zip.
        device: where the nets are placed (weights are read on CPU, then moved).
        verify_hash: compare sha256(weights) with ``card.content_hash`` (mismatch -> PackageError).
        build_network: network factory ``(name, in_channels, num_classes, width, **kw)``; defaults to
            ``models.networks.registry.build_network``.

    Returns:
        :class:`ModelPackage` with both nets in eval mode on ``device``.
    """
    p = Path(path)
    card_bytes, weights = _read_package_files(p)
    card = _parse_card(card_bytes)
    if verify_hash:
        actual = hashlib.sha256(weights).hexdigest()
        if actual != card.content_hash:
            raise PackageError(
                f"package {p}: weights sha256 {actual} does not match "
                f"the card's content_hash {card.content_hash}"
            )
    try:
        tensors = load_safetensors_bytes(weights)
    except Exception as exc:  # safetensors raises its own error types
        raise PackageError(f"package {p}: unreadable weights: {exc}") from exc
    factory = build_network or _default_factory()
    nets = []
    for which in ("net_a", "net_b"):
        prefix = f"{which}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        net = _build_net(factory, card, which)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise PackageError(f"package {p}: {which} weights do not fit its architecture: {exc}") from exc
        nets.append(net.to(torch.device(device)).eval())
    unknown = [k for k in tensors if not k.startswith(("net_a.", "net_b."))]
    if unknown:
        raise PackageError(f"package {p}: unexpected weight keys {unknown[:5]}")
    return ModelPackage(card=card, net_a=nets[0], net_b=nets[1], path=p)
