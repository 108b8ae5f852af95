"""Data: dataset readers (``readers``, ``msd``), the phantom generator (``phantoms``) and transforms.

Names are exported lazily (PEP 562) so that importing one submodule, e.g. ``models.data.transforms``,
does not import the others (h5py, nibabel, scipy).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.data.msd import MSDDataset
    from models.data.phantoms import (
        PHANTOM_CLASSES,
        Phantom,
        make_phantom,
        otsu_threshold,
        write_phantom_dataset,
    )
    from models.data.readers import (
        LA_H5_SPACING,
        Case,
        LAH5Dataset,
        Volume,
        read_label,
        read_nifti,
    )

__all__ = [
    # readers
    "LA_H5_SPACING",
    "Case",
    "LAH5Dataset",
    "MSDDataset",
    "Volume",
    "read_label",
    "read_nifti",
    # phantoms
    "PHANTOM_CLASSES",
    "Phantom",
    "make_phantom",
    "otsu_threshold",
    "write_phantom_dataset",
]

_READERS = ("LA_H5_SPACING", "Case", "LAH5Dataset", "Volume", "read_label", "read_nifti")
_PHANTOMS = ("PHANTOM_CLASSES", "Phantom", "make_phantom", "otsu_threshold", "write_phantom_dataset")
_MODULE_OF: dict[str, str] = {**dict.fromkeys(_READERS, "readers"), **dict.fromkeys(_PHANTOMS, "phantoms"),
                              "MSDDataset": "msd"}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'models.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"models.data.{module}"), name)
