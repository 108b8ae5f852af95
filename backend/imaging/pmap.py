"""The entropy map as a DICOM Parametric Map (float32) referencing the source series (highdicom).

Real World Value Mapping: LUT label ``entropy``, identity slope/intercept over [0, 1], units UCUM ``1``
(unitless), quantity "normalised predictive entropy" (entropy ÷ log K). Frames follow the source frames
(acquisition plane, same Frame of Reference). ``Laterality`` (General Series, Type 2C) is copied from the
source or written empty: without it dciodvfy reports an error.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.sr.coding import Code

from backend.imaging.dicom_refs import DicomSource, derived_uid, resolve_source, volume_to_frames
from backend.imaging.errors import ImagingError

#: UCUM "1": dimensionless.
UNITLESS = Code(value="1", scheme_designator="UCUM", meaning="no units")
ENTROPY_LUT_LABEL = "entropy"


def build_entropy_pmap(
    entropy: npt.ArrayLike,
    source: DicomSource,
    *,
    model_version: str,
    series_number: int = 901,
    series_description: str = "dualseg entropy (uncertainty)",
    instance_number: int = 1,
    uid_seed: str | None = None,
    manufacturer: str = "dualseg",
    manufacturer_model_name: str = "dualseg",
    software_version: str = "dualseg",
    device_serial_number: str = "0",
    content_label: str = "ENTROPY",
) -> hd.pm.ParametricMap:
    """Build a float32 Parametric Map of ``entropy`` (``[i, j, k]`` in [0, 1] on the source grid).

    ``source`` is as for :func:`~backend.imaging.seg.build_seg`. Values within 1e-5 outside [0, 1] are
    clipped; anything else (or NaN/Inf) is rejected.
    """
    frames = resolve_source(source)
    arr = np.asarray(entropy, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ImagingError("the entropy map contains NaN or infinite values")
    if arr.size and (float(arr.min()) < -1e-5 or float(arr.max()) > 1 + 1e-5):
        raise ImagingError(
            f"entropy must be normalised to [0, 1] (entropy / log K), got {arr.min():.4g}..{arr.max():.4g}"
        )
    pixel_array = volume_to_frames(np.clip(arr, 0.0, 1.0), frames, "entropy map")
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=ENTROPY_LUT_LABEL,
        lut_explanation=("Normalised entropy H/log K, dualseg " + model_version)[:64],  # LO: 64 chars
        unit=UNITLESS,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
    )
    try:
        pmap = hd.pm.ParametricMap(
            source_images=frames.datasets,
            pixel_array=pixel_array,
            series_instance_uid=derived_uid(uid_seed, "pmap-series"),
            series_number=series_number,
            sop_instance_uid=derived_uid(uid_seed, "pmap-instance"),
            instance_number=instance_number,
            manufacturer=manufacturer,
            manufacturer_model_name=manufacturer_model_name,
            software_versions=software_version,
            device_serial_number=device_serial_number,
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping],
            voi_lut_transformations=[
                hd.VOILUTTransformation(
                    window_center=0.5, window_width=1.0, window_explanation="entropy 0..1"
                )
            ],
            content_label=content_label,
            content_description="Voxelwise uncertainty (normalised entropy)",
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise ImagingError(
            f"could not build the entropy Parametric Map from the source series: {exc}"
        ) from exc
    if "Laterality" not in pmap:
        pmap.Laterality = frames.laterality
    pmap.SeriesDescription = series_description[:64]
    return pmap
