"""Hostile and broken inputs for the upload and correction endpoints.

``build_corpus(workdir)`` returns :class:`Item` s made in memory (seconds, a few MB). Run as a script to
write them to a folder for manual testing with curl::

    python tests/corpus/make_corpus.py /tmp/corpus      # one sub-folder per item + index.json

Every item is refused by a correct server with a 4xx and a JSON error message and leaves nothing
behind; ``ACCEPTED_SANITISED`` items are valid images under hostile *names*, which must be accepted
with the name cleaned.
"""

from __future__ import annotations

import gzip
import io
import json
import stat
import struct
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers import blob_volume, oblique_affine, write_dicom_series  # noqa: E402

SHAPE = (20, 18, 12)  # the reference case's grid (corrections are made against it)
REJECT = (400, 404, 409, 413, 415, 422)


@dataclass
class Item:
    name: str
    target: Literal["upload", "correction"]
    files: list[tuple[str, bytes]]
    why: str
    expect: tuple[int, ...] = REJECT
    form: dict[str, str] = field(default_factory=dict)


def _nifti(array: np.ndarray, affine: np.ndarray | None = None, gz: bool = True, **header: object) -> bytes:
    import nibabel as nib

    raw = nib.Nifti1Image(array, np.eye(4) if affine is None else affine).to_bytes()
    if header:  # patch the written header bytes: nibabel itself refuses singular or NaN affines
        hdr = nib.Nifti1Header(raw[:348], check=False)
        for key, value in header.items():
            hdr[key] = value
        raw = hdr.binaryblock + raw[348:]
    return gzip.compress(raw) if gz else raw


def reference_image() -> tuple[np.ndarray, np.ndarray]:
    image, _ = blob_volume(SHAPE, seed=5)
    return image, oblique_affine()


def _zip(
    entries: list[tuple[str, bytes]], mode: dict[str, int] | None = None, method: int = zipfile.ZIP_DEFLATED
) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = method
            if mode and name in mode:
                info.external_attr = mode[name] << 16
            zf.writestr(info, data)
    return buf.getvalue()


def _absurd_dims_nifti() -> bytes:
    """A 348-byte header that claims 60000^3 voxels, followed by a few bytes of data."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((16, 16, 16))
    hdr.set_data_dtype(np.float32)
    raw = bytearray(hdr.binaryblock)
    struct.pack_into("<8h", raw, 40, 3, 30000, 30000, 30000, 1, 1, 1, 1)  # dim[] at offset 40
    return bytes(raw) + b"\0" * 4 + b"\0" * 1024


def _dicom_series(workdir: Path, name: str, image: np.ndarray, affine: np.ndarray) -> list[Path]:
    return write_dicom_series(workdir / name, image, affine, modality="CT", shuffle_names=False)


def _dicom_items(workdir: Path) -> list[Item]:
    import pydicom

    image, _ = blob_volume((16, 16, 6), seed=2)
    image = np.round(image * 2) / 2
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    items: list[Item] = []

    def read(paths: list[Path]) -> list[pydicom.Dataset]:
        return [pydicom.dcmread(p) for p in paths]

    def dump(datasets: list[pydicom.Dataset]) -> list[tuple[str, bytes]]:
        out = []
        for n, ds in enumerate(datasets):
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            out.append((f"slice{n:03d}.dcm", buf.getvalue()))
        return out

    base = _dicom_series(workdir, "base", image, affine)
    no_pixels = read(base)
    for ds in no_pixels:
        del ds.PixelData
    items.append(Item("dicom_without_pixel_data", "upload", dump(no_pixels), "headers only, no PixelData"))

    truncated = read(base)
    truncated[3].PixelData = truncated[3].PixelData[: len(truncated[3].PixelData) // 2]
    items.append(
        Item("dicom_truncated_pixel_data", "upload", dump(truncated), "one slice has half its pixels")
    )

    missing = read(base)
    del missing[2:4]
    items.append(Item("dicom_missing_slices", "upload", dump(missing), "two slices in the middle are gone"))

    mixed = read(base)
    for ds in mixed[3:]:
        ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]  # sagittal among axial slices
    items.append(
        Item("dicom_mixed_orientations", "upload", dump(mixed), "axial and sagittal slices in one series")
    )

    sizes = read(base)
    sizes[1].Rows = 8
    sizes[1].PixelData = sizes[1].PixelData[: 8 * 16 * 2]
    items.append(Item("dicom_mixed_sizes", "upload", dump(sizes), "one slice has another matrix size"))

    garbage_tail = dump(read(base))
    name, data = garbage_tail[0]
    garbage_tail[0] = (name, data[:200])
    items.append(
        Item("dicom_truncated_file", "upload", garbage_tail[:1], "one DICOM file cut after 200 bytes")
    )
    return items


def build_corpus(workdir: Path) -> list[Item]:
    workdir.mkdir(parents=True, exist_ok=True)
    image, affine = reference_image()
    good = _nifti(image.astype(np.float32), affine)
    items: list[Item] = []
    add = items.append

    # archives -------------------------------------------------------------------------------------------
    add(
        Item(
            "zip_bomb_ratio",
            "upload",
            [("bomb.zip", _zip([("a.dcm", b"\0" * (24 * 1024 * 1024))]))],
            "24 MB of zeros deflated to ~24 KB (ratio ~1000)",
        )
    )
    add(
        Item(
            "zip_bomb_entries",
            "upload",
            [("many.zip", _zip([(f"f{n:05d}.dcm", b"") for n in range(5200)], method=zipfile.ZIP_STORED))],
            "5200 entries (limit 5000)",
        )
    )
    add(
        Item(
            "zip_nested",
            "upload",
            [("outer.zip", _zip([("inner.zip", _zip([("x.dcm", b"\0" * 4096)]))]))],
            "a zip inside a zip",
        )
    )
    add(
        Item(
            "zip_traversal",
            "upload",
            [("evil.zip", _zip([("../../../../tmp/dualseg-evil.dcm", b"x" * 200)]))],
            "'..' entry",
        )
    )
    add(
        Item(
            "zip_absolute_path",
            "upload",
            [("abs.zip", _zip([("/tmp/dualseg-abs.dcm", b"x" * 200)]))],
            "absolute entry path",
        )
    )
    add(
        Item(
            "zip_windows_traversal",
            "upload",
            [("win.zip", _zip([("..\\..\\dualseg-win.dcm", b"x" * 200)]))],
            "backslash traversal",
        )
    )
    add(
        Item(
            "zip_symlink",
            "upload",
            [
                (
                    "link.zip",
                    _zip(
                        [("series/link.dcm", b"/etc/passwd")], mode={"series/link.dcm": stat.S_IFLNK | 0o777}
                    ),
                )
            ],
            "a symlink entry pointing at /etc/passwd",
        )
    )
    add(
        Item(
            "zip_truncated",
            "upload",
            [("cut.zip", _zip([("a.dcm", b"y" * 50_000)])[:-40])],
            "a zip without its central directory end",
        )
    )
    add(Item("zip_empty", "upload", [("empty.zip", _zip([]))], "a zip with no entries"))

    # names and garbage -----------------------------------------------------------------------------------
    add(
        Item(
            "traversal_name_garbage",
            "upload",
            [("../../../../tmp/dualseg-evil.nii.gz", b"\x1f\x8bnope")],
            "'..' in the part's file name, content garbage",
        )
    )
    add(
        Item(
            "garbage_nii_gz",
            "upload",
            [("x.nii.gz", b"\x1f\x8b\x08" + bytes(range(256)) * 8)],
            "not gzip inside",
        )
    )
    add(Item("garbage_dcm", "upload", [("x.dcm", b"NOT DICOM " * 100)], "random bytes named .dcm"))
    add(
        Item(
            "garbage_no_name", "upload", [("", np.random.default_rng(0).bytes(5000))], "random bytes, no name"
        )
    )
    add(Item("empty_file", "upload", [("empty.nii.gz", b"")], "zero bytes"))
    add(
        Item(
            "truncated_gzip",
            "upload",
            [("cut.nii.gz", good[: len(good) // 2])],
            "a valid .nii.gz cut in half",
        )
    )
    add(Item("two_niftis", "upload", [("a.nii.gz", good), ("b.nii.gz", good)], "two volumes in one case"))
    add(
        Item(
            "nifti_header_only",
            "upload",
            [("h.nii", _nifti(image, affine, gz=False)[:348])],
            "the header without voxel data",
        )
    )

    # NIfTI content ---------------------------------------------------------------------------------------
    add(
        Item(
            "nifti_absurd_dims",
            "upload",
            [("huge.nii", _absurd_dims_nifti())],
            "header claims 30000^3 voxels",
        )
    )
    add(
        Item(
            "nifti_zero_spacing",
            "upload",
            [("z.nii.gz", _nifti(image, None, pixdim=[1, 1, 0, 1, 1, 1, 1, 1], srow_y=[0, 0, 0, 0]))],
            "pixdim 0 on one axis, singular affine",
        )
    )
    add(
        Item(
            "nifti_negative_pixdim",
            "upload",
            [("n.nii.gz", _nifti(image, np.eye(4), pixdim=[1, 1, -1, 1, 1, 1, 1, 1]))],
            "pixdim -1",
        )
    )
    nan = image.copy()
    nan[3, 3, 3] = np.nan
    add(Item("nifti_nan", "upload", [("nan.nii.gz", _nifti(nan, affine))], "one NaN voxel"))
    inf = image.copy()
    inf[0, 0, 0] = np.inf
    add(Item("nifti_inf", "upload", [("inf.nii.gz", _nifti(inf, affine))], "one +Inf voxel"))
    add(
        Item(
            "nifti_nan_affine",
            "upload",
            [("na.nii.gz", _nifti(image, None, srow_x=[np.nan] * 4, qform_code=0))],
            "NaN in the affine",
        )
    )
    add(Item("nifti_2d", "upload", [("flat.nii.gz", _nifti(image[:, :, 0], affine))], "a single slice"))
    add(
        Item(
            "nifti_5d",
            "upload",
            [("5d.nii.gz", _nifti(np.zeros((6, 6, 4, 2, 2), np.float32)))],
            "5 dimensions",
        )
    )
    add(
        Item(
            "nifti_4d_timeseries",
            "upload",
            [("4d.nii.gz", _nifti(np.zeros((6, 6, 4, 3), np.float32)))],
            "a time series",
        )
    )
    add(
        Item(
            "nifti_complex", "upload", [("c.nii.gz", _nifti(image.astype(np.complex64), affine))], "complex64"
        )
    )
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    add(Item("nifti_rgb", "upload", [("rgb.nii.gz", _nifti(rgb, affine))], "RGB24 voxels"))
    add(
        Item(
            "nifti_one_voxel_axis_zero",
            "upload",
            [("zero.nii.gz", _nifti(np.zeros((4, 0, 4), np.float32)))],
            "an axis of length 0",
        )
    )

    # DICOM -----------------------------------------------------------------------------------------------
    items.extend(_dicom_items(workdir))

    # corrections (against a case made from reference_image) ------------------------------------------------
    labels = np.zeros(SHAPE, np.uint8)
    labels[5:10, 5:10, 3:6] = 1
    add(
        Item(
            "correction_wrong_grid",
            "correction",
            [("c.nii.gz", _nifti(labels[:-1], affine))],
            "one column short",
        )
    )
    shifted = affine.copy()
    shifted[:3, 3] += 25.0
    add(
        Item(
            "correction_wrong_affine", "correction", [("c.nii.gz", _nifti(labels, shifted))], "moved by 25 mm"
        )
    )
    add(
        Item(
            "correction_labels_out_of_range",
            "correction",
            [("c.nii.gz", _nifti(labels * 7, affine))],
            "label 7 for a 2-class model",
        )
    )
    add(
        Item(
            "correction_negative_labels",
            "correction",
            [("c.nii.gz", _nifti(labels.astype(np.int16) - 1, affine))],
            "label -1",
        )
    )
    frac = labels.astype(np.float32) * 0.5
    add(Item("correction_fractional", "correction", [("c.nii.gz", _nifti(frac, affine))], "0.5 labels"))
    nanlab = labels.astype(np.float32)
    nanlab[0, 0, 0] = np.nan
    add(Item("correction_nan", "correction", [("c.nii.gz", _nifti(nanlab, affine))], "a NaN label"))
    add(Item("correction_garbage", "correction", [("c.nii.gz", b"\x1f\x8b garbage")], "not NIfTI"))
    add(Item("correction_not_an_image", "correction", [("c.txt", b"hello")], "a text file"))
    add(Item("correction_empty", "correction", [("c.nii.gz", b"")], "zero bytes"))
    add(
        Item(
            "correction_traversal_name",
            "correction",
            [("../../../evil.nii.gz", b"\x1f\x8b garbage")],
            "'..' in the file name",
        )
    )
    add(
        Item(
            "correction_seg_garbage",
            "correction",
            [("seg.dcm", b"\0" * 128 + b"DICM" + b"\0" * 64)],
            "DICM magic and nothing else",
        )
    )
    return items


ACCEPTED_SANITISED: list[tuple[str, str]] = [
    ("../../../../tmp/dualseg-traversal.nii.gz", "a valid volume whose part name climbs out of the folder"),
    ("/etc/dualseg-abs.nii.gz", "absolute part name"),
    ("..\\..\\dualseg-win.nii.gz", "backslash traversal in the part name"),
    ("\x00evil\r\n.nii.gz", "control characters in the part name"),
]


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else "corpus")
    items = build_corpus(out / "_work")
    index = []
    for item in items:
        folder = out / item.name
        folder.mkdir(parents=True, exist_ok=True)
        for n, (_name, data) in enumerate(item.files):
            (folder / f"{n:03d}.bin").write_bytes(data)
        index.append(
            {
                "name": item.name,
                "target": item.target,
                "why": item.why,
                "files": [name for name, _ in item.files],
            }
        )
    (out / "index.json").write_text(json.dumps(index, indent=1))
    print(f"wrote {len(items)} items to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
