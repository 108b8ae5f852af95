"""DICOM Segmentation (BINARY) from a label mask on the source series grid (highdicom).

One segment per non-background class of the model card (SNOMED category/type codes, display colour),
algorithm identification ``dualseg`` / model version / family, frames in the acquisition plane of the
source series and the same Frame of Reference; highdicom adds the ReferencedSeriesSequence and per-frame
source image references that OHIF needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from backend.imaging.dicom_refs import DicomSource, derived_uid, resolve_source, volume_to_frames
from backend.imaging.errors import ImagingError

AlgorithmType = Literal["AUTOMATIC", "SEMIAUTOMATIC", "MANUAL"]

#: Default algorithm family: DCM 123110 "Artificial Intelligence" (CID 7162).
AI_FAMILY: Code = codes.cid7162.ArtificialIntelligence


@dataclass(frozen=True)
class CodedTerm:
    code: str
    scheme: str
    meaning: str

    def to_code(self) -> Code:
        return Code(value=self.code, scheme_designator=self.scheme, meaning=self.meaning)


@dataclass(frozen=True)
class SegmentClass:
    """One class of the model card (``classes`` entry); index 0 is background and gets no segment."""

    index: int
    name: str
    category: CodedTerm
    type: CodedTerm
    color: tuple[int, int, int]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SegmentClass:
        try:
            index = int(data["index"])
            name = str(data["name"])
            category = CodedTerm(**{k: str(data["category"][k]) for k in ("code", "scheme", "meaning")})
            type_ = CodedTerm(**{k: str(data["type"][k]) for k in ("code", "scheme", "meaning")})
            rgb = [int(c) for c in data.get("color", (128, 128, 128))]
        except (KeyError, TypeError, ValueError) as exc:
            raise ImagingError(f"invalid class description {dict(data)!r}: {exc}") from exc
        if len(rgb) != 3 or any(not 0 <= c <= 255 for c in rgb):
            raise ImagingError(f"class {name!r}: color must be three integers 0..255, got {rgb}")
        if not 0 <= index <= 255:
            raise ImagingError(f"class {name!r}: index must be 0..255, got {index}")
        return cls(index, name, category, type_, (rgb[0], rgb[1], rgb[2]))


def parse_classes(classes: Sequence[Mapping[str, Any] | SegmentClass]) -> list[SegmentClass]:
    """Validated foreground classes sorted by index (background, index 0, is dropped)."""
    parsed = [c if isinstance(c, SegmentClass) else SegmentClass.from_dict(c) for c in classes]
    indices = [c.index for c in parsed]
    if len(set(indices)) != len(indices):
        raise ImagingError(f"class indices must be unique, got {indices}")
    foreground = sorted((c for c in parsed if c.index != 0), key=lambda c: c.index)
    if not foreground:
        raise ImagingError("the class list has no foreground class (index >= 1)")
    return foreground


def _checked_labels(mask: npt.ArrayLike, classes: Sequence[SegmentClass]) -> np.ndarray:
    """The mask as an array, after checking that it holds only known integer labels."""
    arr = np.asarray(mask)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(np.mod(arr, 1) == 0):
            raise ImagingError("the mask must hold integer class labels")
    elif arr.dtype.kind not in "uib":
        raise ImagingError(f"the mask must hold integer class labels, got dtype {arr.dtype}")
    if arr.dtype == np.uint8:  # the predictor's masks: a histogram instead of a sort
        present = {int(v) for v in np.flatnonzero(np.bincount(arr.reshape(-1, order="A"), minlength=1))}
    else:
        present = {int(v) for v in np.unique(arr)}
    known = {0} | {c.index for c in classes}
    unknown = sorted(present - known)
    if unknown:
        raise ImagingError(
            f"the mask contains labels {unknown} that are not in the class list {sorted(known)}"
        )
    return arr


def build_seg(
    mask: npt.ArrayLike,
    source: DicomSource,
    classes: Sequence[Mapping[str, Any] | SegmentClass],
    *,
    model_version: str,
    algorithm_type: AlgorithmType = "AUTOMATIC",
    algorithm_name: str = "dualseg",
    algorithm_family: Code = AI_FAMILY,
    series_number: int = 900,
    series_description: str = "dualseg segmentation",
    instance_number: int = 1,
    uid_seed: str | None = None,
    manufacturer: str = "dualseg",
    manufacturer_model_name: str = "dualseg",
    software_version: str = "dualseg",
    device_serial_number: str = "0",
    content_label: str = "DUALSEG",
    content_description: str | None = "Automatic segmentation (dualseg)",
) -> hd.seg.Segmentation:
    """Build a BINARY DICOM SEG of ``mask`` (``[i, j, k]`` labels on the source grid).

    ``source`` is the input volume's :class:`~backend.imaging.volume.DicomInfo` or, for NIfTI uploads,
    the datasets from :func:`~backend.imaging.synthetic.nifti_to_dicom_series` (slice order). ``classes``
    are model-card class dicts (``index``, ``name``, ``category``/``type`` {code, scheme, meaning},
    ``color``). ``uid_seed`` (e.g. the job id) makes the series/instance UIDs deterministic, so a re-run
    rewrites the same object. For ``MANUAL`` segments no algorithm identification is written.
    Empty frames are omitted; a segment without voxels is still described.
    """
    frames = resolve_source(source)
    segments = parse_classes(classes)
    labels = volume_to_frames(_checked_labels(mask, segments), frames, "mask")  # (frame, row, column)
    pixel_array = np.stack([labels == c.index for c in segments], axis=-1).astype(np.uint8)
    algorithm = None
    if algorithm_type != "MANUAL":
        algorithm = hd.AlgorithmIdentificationSequence(
            name=algorithm_name, family=algorithm_family, version=model_version
        )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=c.name[:64],
            segmented_property_category=c.category.to_code(),
            segmented_property_type=c.type.to_code(),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues[algorithm_type],
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*(v / 255.0 for v in c.color)),
        )
        for number, c in enumerate(segments, start=1)
    ]
    if not np.any(pixel_array):
        # highdicom needs at least one frame; keep the first one (empty) so the object is still valid.
        omit_empty = False
    else:
        omit_empty = True
    try:
        seg = hd.seg.Segmentation(
            source_images=frames.datasets,
            pixel_array=pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=derived_uid(uid_seed, "seg-series"),
            series_number=series_number,
            sop_instance_uid=derived_uid(uid_seed, "seg-instance"),
            instance_number=instance_number,
            manufacturer=manufacturer,
            manufacturer_model_name=manufacturer_model_name,
            software_versions=software_version,
            device_serial_number=device_serial_number,
            content_label=content_label,
            content_description=content_description,
            omit_empty_frames=omit_empty,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise ImagingError(f"could not build the DICOM SEG from the source series: {exc}") from exc
    seg.SeriesDescription = series_description[:64]
    return seg
