"""From a dataset folder to a model package: read, preprocess, train, evaluate, package.

Data (:func:`load_dataset`): an MSD / nnU-Net folder (``imagesTr``/``labelsTr``, optional ``imagesTs``/
``labelsTs``, ``imagesUnlabeled``; :class:`~models.data.msd.MSDDataset`) or the LA ``.h5`` set
(``train.list`` / ``test.list``; :class:`~models.data.readers.LAH5Dataset`).

Training (:func:`train_from_dataset`): every volume is preprocessed exactly as the predictor will
(:func:`~models.data.transforms.preprocess` with the card's preprocessing: canonical RAS, resample to the
config spacing, intensity); labels follow with :func:`~models.data.transforms.preprocess_label`. The first
``config.num_labeled`` labeled cases (sorted by id) are labeled; the other labeled cases' images join the
unlabeled ones. Both nets are trained with :func:`~models.training.api.train_dual`, then evaluated on the
labeled test split with the real :class:`~models.inference.predictor.Predictor` on each case's **original**
grid (metrics in mm, per class) and written as a package (:func:`~models.package.save_package`).

Work files (``checkpoint.pt``, ``train_log.jsonl``, ``evaluation.json``) go to ``<out_dir>/training/``;
the checkpoint is removed after a finished run unless ``keep_checkpoint`` (``resume`` needs it).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.data.readers import LAH5Dataset, read_label, read_nifti
from models.data.transforms import preprocess, preprocess_label, voxel_spacing
from models.metrics import aggregate, evaluate_case
from models.package import ModelCard, ModelPackage, load_package, save_package
from models.runtime import json_safe, resolve_device
from models.training.api import train_dual
from models.training.config import TrainConfig

WORK_DIR = "training"
SUMMARY_METRICS = ("dice", "jaccard", "hd95_mm", "asd_mm")
SCT_ANATOMY = {"code": "123037004", "scheme": "SCT", "meaning": "Anatomical Structure"}
#: Known class names (lower case, "_" for spaces) -> SNOMED CT type code and meaning.
SNOMED_TYPES: dict[str, tuple[str, str]] = {
    "left_atrium": ("82471001", "Left atrium"), "la": ("82471001", "Left atrium"),
    "pancreas": ("15776009", "Pancreas"), "liver": ("10200004", "Liver"), "spleen": ("78961009", "Spleen"),
    "heart": ("80891009", "Heart"), "kidney": ("64033007", "Kidney"), "brain": ("12738006", "Brain"),
}
_GENERIC_TYPE = ("85756007", "Tissue")  # background and classes without a known code
_PALETTE = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60)]
SYNTHETIC_NOTE = ("Trained on synthetic phantoms only (models.data.phantoms): a demonstration model, "
                  "not validated on real images, not for clinical use.")
Loaded = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]


# ---------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Item:
    """One case; ``load()`` returns ``(image (C, X, Y, Z) float32, affine (4, 4), label (X, Y, Z) | None)``
    on the case's original grid."""

    id: str
    load: Callable[[], Loaded] = field(repr=False)
    source: str = ""


@dataclass
class DatasetSource:
    """A dataset folder as lists of cases (labeled sorted by id), class names and provenance."""

    root: Path
    kind: str  # "msd" | "la_h5"
    class_names: dict[int, str]
    labeled: list[Item]
    unlabeled: list[Item]
    test: list[Item]  # labeled test cases only
    name: str = ""
    synthetic: bool = False


def _channels_first(array: np.ndarray) -> np.ndarray:
    arr = np.asarray(array, dtype=np.float32)
    return arr[None] if arr.ndim == 3 else np.moveaxis(arr, -1, 0)


def load_dataset(path: str | Path) -> DatasetSource:
    """Open an MSD / nnU-Net folder or an LA ``.h5`` folder (see the module docstring).

    Raises:
        ValueError: not a dataset folder, or an inconsistent one (the message says why).
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"dataset folder not found: {root}")
    if (root / "imagesTr").is_dir():
        return _msd_source(root)
    if (root / "train.list").is_file() or (root.parent / "train.list").is_file():
        return _la_source(root)
    raise ValueError(f"{root} is neither an MSD / nnU-Net folder (imagesTr/) nor an LA .h5 folder "
                     "(train.list)")


def _msd_source(root: Path) -> DatasetSource:
    from models.data.msd import MSDDataset

    ds = MSDDataset(root)

    def item(case: Any) -> Item:
        def load() -> Loaded:
            image, label = ds.load(case)
            return _channels_first(image.array), image.affine, None if label is None else label.array

        return Item(case.id, load, str(case.image_path))

    name = str(ds.meta.get("name", root.name))
    return DatasetSource(
        root=root, kind="msd", class_names=ds.class_names, labeled=[item(c) for c in ds.labeled_cases],
        unlabeled=[item(c) for c in ds.unlabeled_cases],
        test=[item(c) for c in ds.test_cases if c.label_path is not None],
        name=name, synthetic=name == "DualsegPhantomLA",
    )


def _la_source(root: Path) -> DatasetSource:
    def items(ds: LAH5Dataset) -> list[Item]:
        def make(i: int) -> Item:
            def load() -> Loaded:
                image, label = ds[i]
                return _channels_first(image.array), image.affine, label.array

            return Item(ds.case_ids[i], load, str(ds.paths[i]))

        return sorted((make(i) for i in range(len(ds))), key=lambda it: it.id)

    train = LAH5Dataset(root, "train.list")
    has_test = (root / "test.list").is_file() or (root.parent / "test.list").is_file()
    return DatasetSource(root=root, kind="la_h5", class_names={0: "background", 1: "left_atrium"},
                         labeled=items(train), unlabeled=[],
                         test=items(LAH5Dataset(root, "test.list")) if has_test else [], name="LA")


def items_from_pairs(pairs: Iterable[tuple[str | Path, str | Path]]) -> list[Item]:
    """``(image NIfTI, label NIfTI)`` paths -> :class:`Item` list (a held-out list for evaluation)."""
    out = []
    for image_path, label_path in pairs:
        def load(ip: Path = Path(image_path), lp: Path = Path(label_path)) -> Loaded:
            image, label = read_nifti(ip), read_label(lp)
            if label.array.shape != image.array.shape[:3]:
                raise ValueError(f"{lp}: label shape {label.array.shape} != image {image.array.shape[:3]}")
            return _channels_first(image.array), image.affine, label.array

        name = Path(image_path).name
        out.append(Item(re.sub(r"(_0000)?\.nii(\.gz)?$", "", name), load, str(image_path)))
    return out


@contextmanager
def _bar(enabled: bool, description: str, total: int) -> Iterator[Callable[[], None]]:
    """A rich progress bar; yields ``advance()``."""
    if not enabled or total == 0:
        yield lambda: None
        return
    from rich.progress import Progress

    with Progress() as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)


def intensity_spec(config: TrainConfig) -> dict[str, Any]:
    """The config's intensity settings as a transforms / card spec (see ``validate_intensity_spec``)."""
    it = config.preprocessing.intensity
    if it.mode == "clip_zscore":
        assert it.clip_percentiles is not None
        return {"mode": "clip_zscore", "lower_percentile": it.clip_percentiles[0],
                "upper_percentile": it.clip_percentiles[1]}
    if it.mode == "ct_window":
        assert it.window is not None
        return {"mode": "ct_window", "lower": it.window[0], "upper": it.window[1], "output": "unit"}
    return {"mode": "zscore"}


def preprocessing_spec(config: TrainConfig) -> dict[str, Any]:
    """The card's ``preprocessing`` object for ``config``."""
    return {"spacing": [float(s) for s in config.preprocessing.spacing],
            "orientation": config.preprocessing.orientation, "intensity": intensity_spec(config)}


@dataclass
class PreparedData:
    """Preprocessed training arrays (model grid) plus the source they came from."""

    source: DatasetSource
    spec: dict[str, Any]
    labeled: list[tuple[np.ndarray, np.ndarray]]
    labeled_ids: list[str]
    unlabeled: list[np.ndarray]
    unlabeled_ids: list[str]


def prepare_data(source: DatasetSource, config: TrainConfig, progress: bool = True) -> PreparedData:
    """Preprocess what ``config`` trains on: the first ``num_labeled`` labeled cases with their labels, the
    images of the other labeled cases and every unlabeled image (see the module docstring)."""
    if not source.labeled:
        raise ValueError(f"{source.root}: no labeled training case (labelsTr/ or train.list)")
    k = max(source.class_names) + 1
    if k != config.num_classes:
        raise ValueError(f"the dataset has {k} classes {source.class_names} but config {config.name!r} says "
                         f"num_classes={config.num_classes} (override with --set num_classes={k})")
    n_all = len(source.labeled)
    n_lab = n_all if config.num_labeled is None else min(config.num_labeled, n_all)
    spec = preprocessing_spec(config)
    data = PreparedData(source, spec, [], [], [], [])
    todo = [(it, i < n_lab) for i, it in enumerate(source.labeled)] + [(it, False) for it in source.unlabeled]
    with _bar(progress, "preprocessing", len(todo)) as advance:
        for it, use_label in todo:
            image, affine, label = it.load()
            if image.shape[0] != config.in_channels:
                raise ValueError(f"case {it.id}: {image.shape[0]} channel(s), config: {config.in_channels}")
            x, record = preprocess(image, affine, spec)
            if use_label:
                assert label is not None
                if label.max(initial=0) >= config.num_classes:
                    raise ValueError(f"case {it.id}: label {label.max()} >= num_classes {config.num_classes}")
                data.labeled.append((x, preprocess_label(label, record)))
                data.labeled_ids.append(it.id)
            else:
                data.unlabeled.append(x)
                data.unlabeled_ids.append(it.id)
            advance()
    return data


# ------------------------------------------------------------------------------------------ training
def class_entries(class_names: dict[int, str]) -> list[dict[str, Any]]:
    """Card ``classes`` with SNOMED CT codes (known names; generic "Tissue" otherwise and for background)."""
    out = []
    for i in range(max(class_names) + 1):
        name = class_names.get(i, f"class_{i}")
        key = re.sub(r"[\s-]+", "_", name.strip().lower())
        code, meaning = _GENERIC_TYPE if i == 0 else SNOMED_TYPES.get(key, _GENERIC_TYPE)
        out.append({"index": i, "name": name, "category": dict(SCT_ANATOMY),
                    "type": {"code": code, "scheme": "SCT", "meaning": meaning},
                    "color": list(_PALETTE[i % len(_PALETTE)])})
    return out


def train_prepared(
    data: PreparedData, config: TrainConfig, out_dir: str | Path, device: str | torch.device | None = "auto",
    version: str | None = None, progress: bool = True, resume: bool = False,
    parent_version: str | None = None, use_unlabeled: bool = True, keep_checkpoint: bool = False,
) -> Path:
    """Train on prepared arrays, evaluate on the source's test split, write the package; returns its folder.

    ``use_unlabeled=False`` trains on the labeled cases only (the supervised baselines of the benchmark).
    """
    from models.training.hooks import RichProgressHook

    dev = resolve_device(device)
    out = Path(out_dir)
    work = out / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    version = version or f"{config.name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    hooks = [RichProgressHook(f"training {version}")] if progress else []
    cfg = config if use_unlabeled else replace(config, batch_unlabeled=0)
    t0 = time.perf_counter()
    net_a, net_b, summary = train_dual(cfg, data.labeled, data.unlabeled if use_unlabeled else [], dev,
                                       out_dir=work, hooks=hooks, resume=resume)
    src = data.source
    training = {
        "dataset": {"name": src.name, "format": src.kind, "path": str(src.root), "synthetic": src.synthetic},
        "data": {"labeled": summary["num_labeled"], "unlabeled": summary["num_unlabeled"],
                 "labeled_available": len(src.labeled), "test": len(src.test),
                 "labeled_ids": data.labeled_ids},
        "config": summary["config"], "iterations": summary["iterations"],
        "seconds": round(summary["seconds"], 1), "wall_seconds": round(time.perf_counter() - t0, 1),
        "device": summary["device"], "amp": summary["amp"], "torch_threads": torch.get_num_threads(),
        "parameters": summary["parameters"], "final_losses": summary["final_losses"],
        "stopped": summary["stopped"],
    }
    if src.synthetic:
        training["note"] = SYNTHETIC_NOTE
    nets = config.networks
    card = ModelCard(
        name=f"dualseg-{config.name}", version=version,
        architecture={"in_channels": config.in_channels, "num_classes": config.num_classes,
                      "net_a": {"name": nets.net_a.name, "width": nets.net_a.width},
                      "net_b": {"name": nets.net_b.name, "width": nets.net_b.width}},
        classes=class_entries(src.class_names), preprocessing=data.spec, patch_size=list(config.patch_size),
        training=training, metrics={}, parent_version=parent_version,
    )
    pkg = ModelPackage(card=card, net_a=net_a, net_b=net_b, path=out)
    card.training["ood_reference"] = training_reference(
        pkg, [x for x, _ in data.labeled] + (data.unlabeled if use_unlabeled else []), dev)
    if src.test:
        report = evaluate_items(pkg, src.test, dev, progress=progress)
        (work / "evaluation.json").write_text(json.dumps(json_safe(report), indent=1) + "\n")
        card.metrics = json_safe(card_metrics(report))
    else:
        card.metrics = {"note": "no labeled test split (labelsTs / test.list): not evaluated"}
    save_package(out, net_a, net_b, card)
    ckpt = work / "checkpoint.pt"
    if not keep_checkpoint and not summary["stopped"] and ckpt.exists():
        ckpt.unlink()
    return out


def training_reference(pkg: ModelPackage, arrays: list[np.ndarray], device: torch.device,
                       parent: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The out-of-distribution reference of a package (models/inference/ood.py): the feature vectors of the
    cases it was trained on (preprocessed arrays), fitted anew, or added to ``parent``'s reference on
    retraining. None with fewer than two cases and no parent."""
    from models.inference.ood import features_of_arrays, fit_reference, update_reference
    from models.inference.predictor import Predictor

    predictor = Predictor(pkg, device, overlap=0.5, batch_size=2, amp=False)
    rows = features_of_arrays(predictor.model_probabilities, arrays)
    if parent:
        return update_reference(parent, rows) if rows else parent
    return fit_reference(rows) if len(rows) >= 2 else None


def train_from_dataset(
    dataset_dir: str | Path, config: TrainConfig, out_dir: str | Path,
    device: str | torch.device | None = "auto", version: str | None = None, progress: bool = True,
    resume: bool = False, parent_version: str | None = None, keep_checkpoint: bool = False,
) -> Path:
    """Read + preprocess ``dataset_dir``, train, evaluate on its test split, write the package to ``out_dir``.

    Returns:
        The package folder (``out_dir``), holding ``model.json`` and ``weights.safetensors``.
    """
    data = prepare_data(load_dataset(dataset_dir), config, progress)
    return train_prepared(data, config, out_dir, device, version, progress, resume, parent_version,
                          keep_checkpoint=keep_checkpoint)


# ---------------------------------------------------------------------------------------- evaluation
def _as_package(package: str | Path | ModelPackage, device: torch.device) -> ModelPackage:
    return package if isinstance(package, ModelPackage) else load_package(package, device)


def evaluate_items(
    package: str | Path | ModelPackage, items: Sequence[Item], device: str | torch.device | None = "auto",
    progress: bool = True, on_prediction: Callable[[Item, Any, np.ndarray], None] | None = None,
) -> dict[str, Any]:
    """Predict each item on its original grid and score it (per class, distances in mm).

    ``on_prediction(item, prediction, label)`` is called for every case (the benchmark uses it).
    Returns ``{"version", "num_cases", "cases": [{"id", "image", "seconds", "metrics": {class: {...}}}],
    "aggregate": {class: {metric: {mean, std, min, max, n, n_nan}}}, "summary": {metric: mean over the
    foreground classes}}``.
    """
    from models.inference.predictor import Predictor

    dev = resolve_device(device)
    pkg = _as_package(package, dev)
    names = {int(c["index"]): str(c["name"]) for c in pkg.card.classes}
    predictor = Predictor(pkg, dev, overlap=0.5, batch_size=2, amp=False)
    cases, raw = [], []
    with _bar(progress, "evaluating", len(items)) as advance:
        for it in items:
            image, affine, label = it.load()
            if label is None:
                raise ValueError(f"case {it.id} has no label: cannot evaluate")
            t0 = time.perf_counter()
            pred = predictor.predict(image if image.shape[0] > 1 else image[0], affine)
            scores = evaluate_case(pred.mask, label, voxel_spacing(affine), pkg.card.num_classes)
            raw.append(scores)
            cases.append({"id": it.id, "image": it.source, "seconds": round(time.perf_counter() - t0, 2),
                          "metrics": {names[c]: v for c, v in scores.items()}})
            if on_prediction is not None:
                on_prediction(it, pred, label)
            advance()
    agg = {names[c]: v for c, v in aggregate(raw).items()} if raw else {}
    summary = {m: float(np.nanmean([agg[c][m]["mean"] for c in agg])) if agg else math.nan
               for m in SUMMARY_METRICS}
    return {"version": pkg.card.version, "num_cases": len(cases), "cases": cases, "aggregate": agg,
            "summary": summary}


def card_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The card's ``metrics``: summary means at the top level, per-class statistics under ``per_class``."""
    return {**report["summary"], "split": "test", "num_cases": report["num_cases"],
            "per_class": report["aggregate"]}


def evaluate_package(
    package: str | Path | ModelPackage, data: str | Path | Sequence[tuple[str | Path, str | Path]],
    device: str | torch.device | None = "auto", progress: bool = True, split: str = "test",
) -> dict[str, Any]:
    """Evaluate a package on a dataset folder's labeled ``split`` (``"test"`` or ``"train"``) or on a list of
    ``(image, label)`` NIfTI paths. See :func:`evaluate_items` for the result."""
    if isinstance(data, (str, Path)):
        if split not in ("test", "train"):
            raise ValueError(f"split must be 'test' or 'train', got {split!r}")
        source = load_dataset(data)
        items = source.test if split == "test" else source.labeled
        if not items:
            where = "imagesTs + labelsTs" if split == "test" else "labelsTr"
            raise ValueError(f"{source.root}: no labeled {split} cases to evaluate ({where})")
    else:
        items = items_from_pairs(data)
        if not items:
            raise ValueError("no (image, label) pairs given")
    return evaluate_items(package, items, device, progress)
