"""DICOM constants of the PACS integration (its Celery task names are in ``backend.broker``)."""

from __future__ import annotations

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
PARAMETRIC_MAP_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.30"
#: Derived objects that are never segmented when pulled or received (they are results, not images).
NON_IMAGE_SOP_CLASSES = frozenset({
    SEG_SOP_CLASS,
    PARAMETRIC_MAP_SOP_CLASS,
    "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.88.34",  # SR
})
#: Manufacturer written into every object dualseg creates (backend.imaging.seg / pmap defaults).
OUR_MANUFACTURER = "dualseg"
