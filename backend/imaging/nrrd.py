"""NRRD volumes (what 3D Slicer's MONAI Label module asks for and may send back), via pynrrd.

Written in the LPS space Slicer itself uses; the geometry is the NIfTI (RAS) affine of the volume, so a
mask written here lies exactly on the input's grid. Reading accepts any NRRD ``space`` pynrrd knows about
that is RAS or LPS based, and returns a RAS affine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backend.imaging.errors import ImagingError

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
_SPACES = {"left-posterior-superior": RAS_TO_LPS, "LPS": RAS_TO_LPS,
           "right-anterior-superior": np.eye(3), "RAS": np.eye(3)}


def write_nrrd(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """``array[i, j, k]`` (uint8) with the RAS ``affine`` of its grid, gzip-encoded."""
    import nrrd

    affine = np.asarray(affine, dtype=float)
    header = {
        "type": "uint8", "dimension": 3, "space": "left-posterior-superior",
        # one row per axis: the LPS step of that axis
        "space directions": (RAS_TO_LPS @ affine[:3, :3]).T,
        "space origin": RAS_TO_LPS @ affine[:3, 3],
        "kinds": ["domain", "domain", "domain"], "encoding": "gzip",
    }
    nrrd.write(str(path), np.ascontiguousarray(array, dtype=np.uint8), header, index_order="F")
    return path


def read_nrrd(path: Path, max_voxels: int = 512**3) -> tuple[np.ndarray, np.ndarray]:
    """(array[i, j, k], RAS affine) of a 3-D NRRD; ImagingError when it is unreadable, not 3-D, larger
    than ``max_voxels`` or has a detached data file (a header must never make the server read another
    file)."""
    import nrrd

    try:
        with open(path, "rb") as f:
            first = nrrd.read_header(f)
        if any(k.replace(" ", "").lower() == "datafile" for k in first):
            raise ImagingError("detached NRRD data files are not accepted; send one attached .nrrd file")
        sizes = [int(n) for n in first.get("sizes", [])]
        if len(sizes) != 3 or min(sizes) < 1 or int(np.prod(sizes)) > max_voxels:
            raise ImagingError(f"the NRRD volume has sizes {sizes}; a 3-D label map of at most "
                               f"{max_voxels} voxels is needed")
        data, header = nrrd.read(str(path), index_order="F")
    except ImagingError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is bad input
        raise ImagingError(f"not a readable NRRD file ({type(exc).__name__}: {exc})") from exc
    if data.ndim != 3:
        raise ImagingError(f"the NRRD volume has {data.ndim} dimensions; a 3-D label map is needed")
    space = str(header.get("space", "left-posterior-superior"))
    if space not in _SPACES:
        raise ImagingError(f"NRRD space {space!r} is not supported (use left-posterior-superior)")
    to_ras = _SPACES[space]  # its own inverse for both spaces
    directions = np.asarray(header.get("space directions", np.eye(3)), dtype=float)
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
    if directions.shape != (3, 3) or origin.shape != (3,) or not np.all(np.isfinite(directions)):
        raise ImagingError("the NRRD header has no usable 3-D 'space directions' / 'space origin'")
    affine = np.eye(4)
    affine[:3, :3] = to_ras @ directions.T
    affine[:3, 3] = to_ras @ origin
    return data, affine
