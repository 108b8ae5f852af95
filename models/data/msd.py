"""Reader for Medical Segmentation Decathlon / nnU-Net style dataset folders (:class:`MSDDataset`).

Yields :class:`~models.data.readers.Case` entries and :class:`~models.data.readers.Volume` objects as the
other readers do (see ``docs/contracts.md``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.data.readers import NIFTI_ENDINGS, Case, Volume, read_label, read_nifti

__all__ = ["MSDDataset"]

_NIFTI_ENDINGS = NIFTI_ENDINGS
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _strip_ending(name: str, endings: tuple[str, ...]) -> str | None:
    for ending in endings:
        if name.endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)]
    return None


def _list_files(folder: Path, endings: tuple[str, ...]) -> dict[str, Path]:
    """Stem -> path of the files in ``folder`` with one of ``endings`` (hidden / ``._`` files skipped)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        stem = _strip_ending(path.name, endings)
        if stem is not None:
            found[stem] = path
    return found


def _group_channels(
    folder: Path, endings: tuple[str, ...], suffix_mode: bool | None
) -> dict[str, list[Path]]:
    """Case id -> channel files of the images in ``folder``.

    ``suffix_mode`` True: names must end in ``_XXXX`` (nnU-Net); False: no suffix; None: suffix mode
    when every file name carries one.
    """
    files = _list_files(folder, endings)
    if suffix_mode is None:
        suffix_mode = bool(files) and all(_CHANNEL_RE.match(stem) for stem in files)
    cases: dict[str, dict[int, Path]] = {}
    for stem, path in files.items():
        if not suffix_mode:
            cases[stem] = {0: path}
            continue
        match = _CHANNEL_RE.match(stem)
        if match is None:
            raise ValueError(f"{path}: image names in {folder} must end with a channel suffix like _0000")
        cases.setdefault(match["case"], {})[int(match["channel"])] = path
    grouped: dict[str, list[Path]] = {}
    for case_id, channels in cases.items():
        if sorted(channels) != list(range(len(channels))):
            raise ValueError(f"case {case_id!r} in {folder}: channel files {sorted(channels)} are not 0..N-1")
        grouped[case_id] = [channels[c] for c in range(len(channels))]
    return grouped


def _resolve_listed(root: Path, entry: str, what: str) -> Path:
    """Resolve a dataset.json path entry; tries nnU-Net v1's ``_0000`` variant for images."""
    path = Path(os.path.normpath(root / entry))
    if path.is_file():
        return path
    for ending in _NIFTI_ENDINGS:
        stem = _strip_ending(path.name, (ending,))
        if stem is not None and what == "image":
            alt = path.with_name(f"{stem}_0000{ending}")
            if alt.is_file():
                return alt
    raise ValueError(f"dataset.json lists {what} {entry!r} but {path} does not exist")


class MSDDataset:
    """Reader for a Medical Segmentation Decathlon / nnU-Net style folder.

    Layout::

        root/imagesTr/<id>.nii.gz | <id>_0000.nii.gz [...]   root/labelsTr/<id>.nii.gz
        root/imagesTs/...  root/labelsTs/... (optional)      root/imagesUnlabeled/... (optional)
        root/dataset.json (optional)

    ``dataset.json`` may be MSD style (``labels`` index->name, ``training`` list of {image, label},
    ``test`` list) or nnU-Net v2 style (``labels`` name->index, ``channel_names``, ``file_ending``); without
    it the folders are scanned. A case is *labeled* when it is listed in ``training`` or a label file with
    its id exists in ``labelsTr``; other images of ``imagesTr`` and every image of ``imagesUnlabeled`` are
    *unlabeled*. Hidden files (``._la_003.nii.gz`` in the MSD tarballs) are ignored.

    Args:
        root: dataset folder.
        class_names: overrides the class names (index -> name). Without it and without dataset.json
            labels, the label files are read once (on first access) to find the classes.
    """

    def __init__(self, root: str | Path, class_names: Mapping[int, str] | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"dataset folder not found: {self.root}")
        images_tr = self.root / "imagesTr"
        if not images_tr.is_dir():
            raise ValueError(f"{self.root} has no imagesTr/ folder (expected an MSD / nnU-Net layout)")
        self.meta: dict[str, Any] = self._read_json()
        self.endings: tuple[str, ...] = _NIFTI_ENDINGS
        suffix_mode: bool | None = None
        if "file_ending" in self.meta:
            ending = str(self.meta["file_ending"])
            if ending not in _NIFTI_ENDINGS:
                raise ValueError(f"file_ending {ending!r} is not supported (only {_NIFTI_ENDINGS})")
            self.endings, suffix_mode = (ending,), True
        self._class_names: dict[int, str] | None = (
            dict(class_names) if class_names is not None else self._parse_labels(self.meta.get("labels"))
        )
        labeled, unlabeled = self._scan_training(images_tr, suffix_mode)
        self.labeled_cases: list[Case] = labeled
        self.unlabeled_cases: list[Case] = unlabeled + self._scan_unlabeled_folder(suffix_mode)
        self.test_cases: list[Case] = self._scan_test(suffix_mode)
        channels = {len(c.channel_paths) for c in self.labeled_cases + self.unlabeled_cases + self.test_cases}
        if len(channels) > 1:
            raise ValueError(f"{self.root}: cases have different numbers of channel files {sorted(channels)}")
        ids = [c.id for c in self.labeled_cases + self.unlabeled_cases]
        if len(ids) != len(set(ids)):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"{self.root}: duplicate case ids {dup[:5]}")

    # ------------------------------------------------------------------ parsing
    def _read_json(self) -> dict[str, Any]:
        path = self.root / "dataset.json"
        if not path.is_file():
            return {}
        try:
            meta = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(meta, dict):
            raise ValueError(f"{path} must contain a JSON object")
        return meta

    @staticmethod
    def _parse_labels(labels: Any) -> dict[int, str] | None:
        """MSD ``{"0": "background"}`` or nnU-Net v2 ``{"background": 0}`` -> ``{0: "background"}``."""
        if labels is None:
            return None
        if not isinstance(labels, dict) or not labels:
            raise ValueError("dataset.json 'labels' must be a non-empty object")
        if all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):
            names = {int(v): str(k) for k, v in labels.items()}
        elif all(isinstance(v, str) and str(k).lstrip("-").isdigit() for k, v in labels.items()):
            names = {int(k): str(v) for k, v in labels.items()}
        else:
            raise ValueError(
                f"dataset.json 'labels' not understood (region-based labels are not supported): {labels}"
            )
        if 0 not in names or min(names) < 0 or max(names) > 255:
            raise ValueError(f"dataset.json 'labels' must have indices 0..255 including 0: {labels}")
        return dict(sorted(names.items()))

    def _scan_training(self, images_tr: Path, suffix_mode: bool | None) -> tuple[list[Case], list[Case]]:
        images = _group_channels(images_tr, self.endings, suffix_mode)
        labels_tr = self.root / "labelsTr"
        labels = _list_files(labels_tr, self.endings) if labels_tr.is_dir() else {}
        labeled: dict[str, Case] = {}
        training = self.meta.get("training")
        if isinstance(training, list):
            for entry in training:
                if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                    raise ValueError(f"dataset.json training entry must have 'image' and 'label': {entry}")
                image = _resolve_listed(self.root, str(entry["image"]), "image")
                label = _resolve_listed(self.root, str(entry["label"]), "label")
                case_id = _strip_ending(label.name, self.endings) or label.name
                channels = images.get(case_id, [image])
                labeled[case_id] = Case(case_id, channels[0], label, tuple(channels))
        elif training is not None:
            raise ValueError("dataset.json 'training' must be a list")
        orphans = sorted(set(labels) - set(images) - set(labeled))
        if orphans:
            raise ValueError(f"{labels_tr}: label files without a matching image in imagesTr: {orphans[:5]}")
        unlabeled: list[Case] = []
        for case_id, channels in images.items():
            if case_id in labeled:
                continue
            if case_id in labels:
                labeled[case_id] = Case(case_id, channels[0], labels[case_id], tuple(channels))
            else:
                unlabeled.append(Case(case_id, channels[0], None, tuple(channels)))
        if not labeled and not unlabeled:
            raise ValueError(f"{images_tr} contains no NIfTI images")
        return sorted(labeled.values(), key=lambda c: c.id), unlabeled

    def _scan_unlabeled_folder(self, suffix_mode: bool | None) -> list[Case]:
        folder = self.root / "imagesUnlabeled"
        if not folder.is_dir():
            return []
        images = _group_channels(folder, self.endings, suffix_mode)
        return [Case(cid, ch[0], None, tuple(ch)) for cid, ch in images.items()]

    def _scan_test(self, suffix_mode: bool | None) -> list[Case]:
        images_ts, labels_ts = self.root / "imagesTs", self.root / "labelsTs"
        labels = _list_files(labels_ts, self.endings) if labels_ts.is_dir() else {}
        test = self.meta.get("test")
        if isinstance(test, list) and test:
            groups = _group_channels(images_ts, self.endings, suffix_mode) if images_ts.is_dir() else {}
            cases = []
            for entry in test:
                rel = entry.get("image") if isinstance(entry, dict) else entry
                if not isinstance(rel, str):
                    raise ValueError(f"dataset.json test entry not understood: {entry}")
                image = _resolve_listed(self.root, rel, "image")
                case_id = _strip_ending(Path(rel).name, self.endings) or Path(rel).name
                channels = groups.get(case_id, [image])
                cases.append(Case(case_id, channels[0], labels.get(case_id), tuple(channels)))
            return cases
        if not images_ts.is_dir():
            if labels:
                raise ValueError(f"{labels_ts} exists but {images_ts} does not")
            return []
        images = _group_channels(images_ts, self.endings, suffix_mode)
        orphans = sorted(set(labels) - set(images))
        if orphans:
            raise ValueError(f"{labels_ts}: label files without a matching image in imagesTs: {orphans[:5]}")
        return [Case(cid, ch[0], labels.get(cid), tuple(ch)) for cid, ch in images.items()]

    # ------------------------------------------------------------------ access
    @property
    def class_names(self) -> dict[int, str]:
        """Class index -> name (0 = background)."""
        if self._class_names is None:
            top = 0
            for case in self.labeled_cases:
                assert case.label_path is not None
                top = max(top, int(read_label(case.label_path).array.max()))
            self._class_names = {0: "background", **{i: f"class_{i}" for i in range(1, max(top, 1) + 1)}}
        return dict(self._class_names)

    @property
    def num_classes(self) -> int:
        """Number of classes K (largest index + 1)."""
        return max(self.class_names) + 1

    def read_image(self, case: Case, dtype: npt.DTypeLike = np.float32) -> Volume:
        """Image of ``case``: ``(X, Y, Z)``, or ``(X, Y, Z, C)`` for multi-channel cases (channels last)."""
        vols = [read_nifti(p, dtype=dtype) for p in case.channel_paths]
        if len(vols) == 1:
            return vols[0]
        for p, v in zip(case.channel_paths[1:], vols[1:], strict=True):
            if v.array.shape != vols[0].array.shape:
                raise ValueError(f"{p}: channel shape {v.array.shape} differs from {vols[0].array.shape}")
        return Volume(np.stack([v.array for v in vols], axis=-1), vols[0].affine)

    def read_label(self, case: Case) -> Volume | None:
        """Label map of ``case`` (uint8 ``(X, Y, Z)``), or None when it has none."""
        return None if case.label_path is None else read_label(case.label_path)

    def load(self, case: Case) -> tuple[Volume, Volume | None]:
        """``(image, label)`` of ``case``; checks that their shapes agree."""
        image, label = self.read_image(case), self.read_label(case)
        if label is not None and label.array.shape != image.array.shape[:3]:
            raise ValueError(
                f"case {case.id}: label shape {label.array.shape} != image shape {image.array.shape[:3]}"
            )
        return image, label
