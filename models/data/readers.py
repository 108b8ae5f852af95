"""Dataset readers: NIfTI volumes and the Left Atrium ``.h5`` set (MSD / nnU-Net folders:
:class:`models.data.msd.MSDDataset`, built on this module).

Every reader yields :class:`Volume` objects: a numpy array indexed ``[i, j, k]`` in NIfTI/nibabel voxel
order with a 4x4 affine mapping ``(i, j, k, 1)`` to RAS+ millimetres (see ``docs/contracts.md``).
Nothing here reorients or resamples; that belongs to the transforms / predictor.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np
import numpy.typing as npt

__all__ = [
    "LA_H5_SPACING",
    "Case",
    "LAH5Dataset",
    "Volume",
    "read_label",
    "read_nifti",
]

#: Voxel size (mm) of the 2018 Left Atrium challenge MRIs; the ``mri_norm2.h5`` files carry no geometry.
LA_H5_SPACING: float = 0.625

#: File endings the NIfTI readers accept.
NIFTI_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Volume:
    """An image or label volume with its geometry.

    Attributes:
        array: voxel data, shape ``(X, Y, Z)`` (or ``(X, Y, Z, C)`` for multi-channel images, channels last
            as in 4D NIfTI), indexed ``[i, j, k]`` in nibabel order.
        affine: ``(4, 4)`` float64 matrix mapping voxel indices to RAS+ mm.
    """

    array: np.ndarray
    affine: np.ndarray

    def __post_init__(self) -> None:
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
        if self.array.ndim not in (3, 4):
            raise ValueError(f"volume array must be 3D (X, Y, Z) or 4D (X, Y, Z, C), got {self.array.shape}")
        object.__setattr__(self, "affine", affine)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size ``(sx, sy, sz)`` in mm: the column norms of ``affine[:3, :3]``."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of :attr:`array`."""
        return tuple(int(s) for s in self.array.shape)


def read_nifti(
    path: str | Path, dtype: npt.DTypeLike | None = np.float32, canonical: bool = False
) -> Volume:
    """Read a NIfTI file (``.nii`` / ``.nii.gz``).

    Args:
        path: file to read.
        dtype: output dtype (default float32, scaling slope/intercept applied). ``None`` keeps the stored
            dtype (or float64 where the header carries a scaling slope/intercept).
        canonical: reorient to the closest RAS+ axis order first (``nib.as_closest_canonical``).

    Returns:
        Volume with ``array`` of shape ``(X, Y, Z)``; a 4D file with one volume is squeezed to 3D, a
        multi-volume file stays ``(X, Y, Z, C)``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"NIfTI file not found: {path}")
    try:
        img: Any = nib.load(str(path))
    except Exception as exc:  # nibabel raises several unrelated types for broken files
        raise ValueError(f"cannot read NIfTI file {path}: {exc}") from exc
    if canonical:
        img = nib.as_closest_canonical(img)
    if dtype is None:
        array = np.asanyarray(img.dataobj)
    elif np.dtype(dtype).kind == "f":
        array = img.get_fdata(dtype=np.dtype(dtype), caching="unchanged")
    else:
        array = np.asanyarray(img.dataobj).astype(dtype, copy=False)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim not in (3, 4):
        raise ValueError(f"{path}: expected a 3D or 4D volume, got shape {array.shape}")
    return Volume(array=np.ascontiguousarray(array), affine=np.asarray(img.affine, dtype=np.float64))


def read_label(path: str | Path, canonical: bool = False) -> Volume:
    """Read a label map as uint8 after checking its values.

    Args:
        path: NIfTI label file.
        canonical: reorient to the closest RAS+ axis order first.

    Returns:
        Volume with a uint8 ``array`` of shape ``(X, Y, Z)``.

    Raises:
        ValueError: values that are not finite, not integers, negative or >= 256.
    """
    vol = read_nifti(path, dtype=None, canonical=canonical)
    arr = vol.array
    if arr.ndim != 3:
        raise ValueError(f"{path}: a label map must be 3D, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{path}: label map contains NaN or infinite values")
            if not np.array_equal(arr, np.round(arr)):
                raise ValueError(f"{path}: label map contains non-integer values")
        elif arr.dtype.kind not in "iub":
            raise ValueError(f"{path}: unsupported label dtype {arr.dtype}")
        if arr.size:
            lo, hi = arr.min(), arr.max()
            if lo < 0:
                raise ValueError(f"{path}: label map contains negative values (min {lo})")
            if hi >= 256:
                raise ValueError(f"{path}: label values must be < 256 (max {hi})")
        arr = arr.astype(np.uint8)
    return Volume(array=arr, affine=vol.affine)


@dataclass(frozen=True)
class Case:
    """One case of a dataset folder.

    Attributes:
        id: case identifier (file name without extension and channel suffix).
        image_path: the image file (the first channel for nnU-Net multi-file cases).
        label_path: label file, or None for unlabeled / unannotated test cases.
        channel_paths: every channel file in channel order (``_0000``, ``_0001`` ...); ``(image_path,)``
            for single-file images.
    """

    id: str
    image_path: Path
    label_path: Path | None = None
    channel_paths: tuple[Path, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.channel_paths:
            object.__setattr__(self, "channel_paths", (self.image_path,))


def _resolve_list_file(root: Path, list_file: str | Path) -> Path:
    candidates = [Path(list_file)]
    if not Path(list_file).is_absolute():
        candidates += [root / list_file, root.parent / list_file]
    for cand in candidates:
        if cand.is_file():
            return cand
    raise ValueError(f"list file {list_file} not found (looked in {root} and {root.parent})")


class LAH5Dataset:
    """The Left Atrium ``.h5`` set of the semi-supervised segmentation literature (UA-MT and successors).

    Layout: ``root/<case>/mri_norm2.h5`` (also accepted: ``root/<case>.h5`` or a list entry naming the
    ``.h5`` file itself), each with datasets ``image`` (float, already normalised) and ``label`` (0/1);
    ``train.list`` / ``test.list`` name one case per line. A relative ``list_file`` is looked up as given,
    then in ``root`` and in ``root``'s parent (where the original repositories keep it).

    The h5 files carry no geometry: every volume gets ``affine = diag(0.625, 0.625, 0.625, 1)``, the
    isotropic voxel size of the 2018 LA challenge MRIs, with the origin at voxel 0.

    Args:
        root: folder holding the case folders.
        list_file: the list of case names to read.
    """

    def __init__(self, root: str | Path, list_file: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"LA dataset folder not found: {self.root}")
        self.list_path = _resolve_list_file(self.root, list_file)
        names = [ln.strip() for ln in self.list_path.read_text().splitlines()]
        names = [n for n in names if n and not n.startswith("#")]
        if not names:
            raise ValueError(f"{self.list_path} lists no cases")
        self.case_ids: list[str] = []
        self.paths: list[Path] = []
        for name in names:
            path = self._resolve_case(name)
            self.case_ids.append(path.parent.name if path.name == "mri_norm2.h5" else path.stem)
            self.paths.append(path)
        self.affine: np.ndarray = np.diag([LA_H5_SPACING] * 3 + [1.0])

    def _resolve_case(self, name: str) -> Path:
        entry = self.root / name
        for cand in (entry / "mri_norm2.h5", entry, entry.with_name(entry.name + ".h5")):
            if cand.is_file() and cand.suffix == ".h5":
                return cand
        raise ValueError(f"{self.list_path} names case {name!r} but no {entry}/mri_norm2.h5 exists")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Volume, Volume]:
        """``(image, label)``: float32 and uint8 volumes of shape ``(X, Y, Z)``."""
        path = self.paths[index]
        with h5py.File(path, "r") as f:
            missing = [k for k in ("image", "label") if k not in f]
            if missing:
                raise ValueError(f"{path}: missing datasets {missing}")
            image = np.asarray(f["image"], dtype=np.float32)
            raw_label = np.asarray(f["label"])
        if image.ndim != 3 or raw_label.shape != image.shape:
            raise ValueError(f"{path}: image {image.shape} / label {raw_label.shape} must be equal 3D shapes")
        if raw_label.size and (raw_label.min() < 0 or raw_label.max() > 255):
            raise ValueError(f"{path}: label values must be in 0..255")
        if raw_label.dtype.kind == "f" and not np.array_equal(raw_label, np.round(raw_label)):
            raise ValueError(f"{path}: label contains non-integer values")
        label = raw_label.astype(np.uint8)
        return Volume(image, self.affine.copy()), Volume(label, self.affine.copy())

    def __iter__(self) -> Iterator[tuple[Volume, Volume]]:
        for i in range(len(self)):
            yield self[i]

