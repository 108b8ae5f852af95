"""PNG slice previews: grayscale image, entropy heatmap overlay and mask outline.

Screen orientation (radiological convention, as PACS viewers and OHIF show it):

* axial: patient anterior at the top, patient **left on the image right** (viewed from the feet);
* coronal: superior at the top, patient left on the image right;
* sagittal: superior at the top, anterior on the image **left** (posterior on the right).

The volume is not resampled: the in-plane array axes are transposed/flipped to the closest of these
directions (nearest-orientation display, like nibabel's ``io_orientation``), and pixels are stretched to
their physical aspect ratio. ``axis`` is an array axis (0, 1, 2) or a plane name; ``"axial"`` means the
array axis closest to the patient's superior axis (``k`` for an RAS-canonical volume), ``"coronal"`` the
one closest to anterior and ``"sagittal"`` the one closest to right.

Grayscale window: the 1st–99th percentile of the whole volume unless ``window`` is given. Heatmap:
an inferno-like colour table (no matplotlib, purple → orange-yellow part); colour and opacity rise from
0 at ``entropy_range[0]`` to full (``opacity``) at ``entropy_range[1]`` and above. Mask: a 1-pixel
outline per class colour (``label_colors`` or a default palette), drawn on top.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from backend.imaging.errors import ImagingError
from backend.imaging.geometry import axis_closest_to, check_affine, closest_axes, spacing_from_affine

AxisSpec = int | Literal["axial", "coronal", "sagittal"]
RGB = tuple[int, int, int]

_PLANE_WORLD_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
# slicing world axis -> ((world axis, sign) shown to the screen's right, (world axis, sign) downward)
_LAYOUT = {
    2: ((0, -1), (1, -1)),  # axial: right = patient left (-R), down = posterior (-A)
    1: ((0, -1), (2, -1)),  # coronal: right = patient left, down = inferior
    0: ((1, -1), (2, -1)),  # sagittal: right = posterior, down = inferior
}
_INFERNO_ANCHORS = np.array(
    [
        [0, 0, 4],
        [31, 12, 72],
        [85, 15, 109],
        [136, 34, 106],
        [186, 54, 85],
        [227, 89, 51],
        [249, 140, 10],
        [249, 201, 50],
        [252, 255, 164],
    ],
    dtype=np.float64,
)
#: 256-entry inferno-like colour table (uint8 RGB).
INFERNO: npt.NDArray[np.uint8] = (
    np.stack(
        [
            np.interp(
                np.linspace(0, 1, 256), np.linspace(0, 1, len(_INFERNO_ANCHORS)), _INFERNO_ANCHORS[:, c]
            )
            for c in range(3)
        ],
        axis=1,
    )
    .round()
    .astype(np.uint8)
)
DEFAULT_LABEL_COLORS: tuple[RGB, ...] = (
    (0, 255, 0),
    (0, 160, 255),
    (255, 0, 255),
    (255, 255, 0),
    (0, 255, 255),
    (255, 128, 0),
)
MAX_PREVIEW_SIDE = 2048
#: Part of the colour table used by the heatmap: skips the near-black start (invisible on dark images)
#: and the pale end (weak on grey), so low entropy shows purple and high entropy orange-yellow.
HEAT_LUT_RANGE = (64, 230)


def resolve_axis(affine: npt.ArrayLike, axis: AxisSpec) -> int:
    """Array axis for ``axis`` (0/1/2 as is; a plane name via the closest patient axis)."""
    if isinstance(axis, str):
        if axis not in _PLANE_WORLD_AXIS:
            raise ImagingError(f"axis must be 0, 1, 2, 'axial', 'coronal' or 'sagittal', got {axis!r}")
        return axis_closest_to(affine, _PLANE_WORLD_AXIS[axis])
    if axis not in (0, 1, 2):
        raise ImagingError(f"axis must be 0, 1, 2, 'axial', 'coronal' or 'sagittal', got {axis!r}")
    return int(axis)


def display_slice(
    array: npt.ArrayLike, affine: npt.ArrayLike, axis: int, index: int
) -> tuple[np.ndarray, tuple[float, float]]:
    """Slice ``index`` along array ``axis`` as a screen image ``(rows, cols)`` and its (row, col) spacing."""
    arr = np.asarray(array)
    if not 0 <= index < arr.shape[axis]:
        raise ImagingError(f"slice {index} is out of range 0..{arr.shape[axis] - 1} for axis {axis}")
    ornt = closest_axes(affine)
    right, down = _LAYOUT[ornt[axis][0]]
    in_plane = [a for a in range(3) if a != axis]
    a_right = next(a for a in in_plane if ornt[a][0] == right[0])
    a_down = next(a for a in in_plane if ornt[a][0] == down[0])
    plane = np.take(arr, index, axis=axis)  # axes (in_plane[0], in_plane[1])
    if in_plane.index(a_down) == 1:
        plane = plane.T
    if ornt[a_right][1] != right[1]:
        plane = plane[:, ::-1]
    if ornt[a_down][1] != down[1]:
        plane = plane[::-1, :]
    spacing = spacing_from_affine(affine)
    return np.ascontiguousarray(plane), (spacing[a_down], spacing[a_right])


def _volume_window(image: np.ndarray) -> tuple[float, float]:
    flat = image.reshape(-1)
    stride = max(1, flat.size // 2_000_000)
    lo, hi = np.percentile(flat[::stride], [1.0, 99.0])
    if hi <= lo:
        lo, hi = float(flat.min()), float(flat.max())
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def _resize(plane: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    if (plane.shape[1], plane.shape[0]) == size:
        return plane
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    if nearest:
        out = Image.fromarray(plane.astype(np.int32), mode="I").resize(size, resample)
    else:
        out = Image.fromarray(plane.astype(np.float32), mode="F").resize(size, resample)
    return np.asarray(out)


def _outline(labels: np.ndarray) -> np.ndarray:
    padded = np.pad(labels, 1, mode="edge")
    center = padded[1:-1, 1:-1]
    differs = np.zeros(labels.shape, dtype=bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        differs |= padded[dy : dy + labels.shape[0], dx : dx + labels.shape[1]] != center
    return differs & (labels > 0)


def _check_shapes(image: np.ndarray, **others: np.ndarray | None) -> None:
    if image.ndim != 3:
        raise ImagingError(f"preview needs a 3D image, got shape {image.shape}")
    for name, arr in others.items():
        if arr is not None and arr.shape != image.shape:
            raise ImagingError(f"{name} shape {arr.shape} does not match the image shape {image.shape}")


def render_slice_rgb(
    image: npt.ArrayLike,
    affine: npt.ArrayLike,
    *,
    entropy: npt.ArrayLike | None = None,
    mask: npt.ArrayLike | None = None,
    axis: AxisSpec = "axial",
    index: int | None = None,
    window: tuple[float, float] | None = None,
    opacity: float = 0.6,
    entropy_range: tuple[float, float] = (0.05, 0.5),
    label_colors: Mapping[int, RGB] | None = None,
    scale: float = 1.0,
) -> npt.NDArray[np.uint8]:
    """One oriented slice as an ``(H, W, 3)`` uint8 RGB array (see the module docstring).

    ``index`` defaults to the middle slice. The output has one pixel per ``min(spacing) / scale`` mm,
    capped at 2048 pixels a side.
    """
    img = np.asarray(image, dtype=np.float32)
    ent = None if entropy is None else np.asarray(entropy, dtype=np.float32)
    lab = None if mask is None else np.asarray(mask)
    _check_shapes(img, entropy=ent, mask=lab)
    aff = check_affine(affine)
    ax = resolve_axis(aff, axis)
    idx = img.shape[ax] // 2 if index is None else int(index)
    lo, hi = window if window is not None else _volume_window(img)
    if hi <= lo:
        raise ImagingError(f"window must have high > low, got {lo}..{hi}")

    plane, (row_sp, col_sp) = display_slice(img, aff, ax, idx)
    pixel = min(row_sp, col_sp) / max(scale, 1e-6)
    width = max(1, round(plane.shape[1] * col_sp / pixel))
    height = max(1, round(plane.shape[0] * row_sp / pixel))
    shrink = max(width, height) / MAX_PREVIEW_SIDE
    if shrink > 1:
        width, height = max(1, round(width / shrink)), max(1, round(height / shrink))
    size = (width, height)

    gray = np.clip((_resize(plane, size, nearest=False) - lo) / (hi - lo), 0.0, 1.0)
    rgb = np.repeat(gray[..., np.newaxis] * 255.0, 3, axis=2)
    if ent is not None:
        e_plane = _resize(display_slice(ent, aff, ax, idx)[0], size, nearest=False)
        e_lo, e_hi = entropy_range
        t = np.clip((e_plane - e_lo) / max(e_hi - e_lo, 1e-6), 0.0, 1.0)
        lut_index = HEAT_LUT_RANGE[0] + t * (HEAT_LUT_RANGE[1] - HEAT_LUT_RANGE[0])
        colors = INFERNO[np.round(lut_index).astype(np.intp)].astype(np.float64)
        alpha = (opacity * t)[..., np.newaxis]
        rgb = rgb * (1.0 - alpha) + colors * alpha
    out = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    if lab is not None:
        labels = _resize(display_slice(lab, aff, ax, idx)[0], size, nearest=True)
        edge = _outline(labels)
        for value in np.unique(labels[edge]):
            color = (label_colors or {}).get(
                int(value), DEFAULT_LABEL_COLORS[(int(value) - 1) % len(DEFAULT_LABEL_COLORS)]
            )
            out[edge & (labels == value)] = color
    return out


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def render_slice_png(
    image: npt.ArrayLike,
    affine: npt.ArrayLike,
    *,
    entropy: npt.ArrayLike | None = None,
    mask: npt.ArrayLike | None = None,
    axis: AxisSpec = "axial",
    index: int | None = None,
    window: tuple[float, float] | None = None,
    opacity: float = 0.6,
    entropy_range: tuple[float, float] = (0.05, 0.5),
    label_colors: Mapping[int, RGB] | None = None,
    scale: float = 1.0,
) -> bytes:
    """PNG bytes of one slice; the options are those of :func:`render_slice_rgb`."""
    return _png(
        render_slice_rgb(
            image,
            affine,
            entropy=entropy,
            mask=mask,
            axis=axis,
            index=index,
            window=window,
            opacity=opacity,
            entropy_range=entropy_range,
            label_colors=label_colors,
            scale=scale,
        )
    )


def montage_indices(length: int, count: int) -> list[int]:
    """``count`` evenly spaced slice indices in ``0..length-1`` (ends excluded when there is room)."""
    if count < 1:
        raise ImagingError(f"montage needs at least one slice, got {count}")
    if count >= length:
        return list(range(length))
    positions = np.linspace(0, length - 1, count + 2)[1:-1]
    return sorted({int(round(p)) for p in positions})


def render_montage_png(
    image: npt.ArrayLike,
    affine: npt.ArrayLike,
    *,
    entropy: npt.ArrayLike | None = None,
    mask: npt.ArrayLike | None = None,
    axis: AxisSpec = "axial",
    count: int = 9,
    columns: int | None = None,
    gap: int = 2,
    window: tuple[float, float] | None = None,
    opacity: float = 0.6,
    entropy_range: tuple[float, float] = (0.05, 0.5),
    label_colors: Mapping[int, RGB] | None = None,
    scale: float = 1.0,
) -> bytes:
    """A grid of ``count`` evenly spaced slices along ``axis`` (row-major, ``columns`` per row).

    One grayscale window (the volume's 1–99 percentile unless given) is used for every tile; tiles are
    separated by ``gap`` black pixels. Other options are those of :func:`render_slice_rgb`.
    """
    img = np.asarray(image, dtype=np.float32)
    _check_shapes(img)
    ax = resolve_axis(affine, axis)
    win = window if window is not None else _volume_window(img)
    tiles = [
        render_slice_rgb(
            img,
            affine,
            entropy=entropy,
            mask=mask,
            axis=ax,
            index=i,
            window=win,
            opacity=opacity,
            entropy_range=entropy_range,
            label_colors=label_colors,
            scale=scale,
        )
        for i in montage_indices(img.shape[ax], count)
    ]
    cols = max(1, columns or math.ceil(math.sqrt(len(tiles))))
    rows = math.ceil(len(tiles) / cols)
    th, tw = tiles[0].shape[:2]
    sheet = np.zeros((rows * th + (rows - 1) * gap, cols * tw + (cols - 1) * gap, 3), dtype=np.uint8)
    for n, tile in enumerate(tiles):
        r, c = divmod(n, cols)
        sheet[r * (th + gap) : r * (th + gap) + th, c * (tw + gap) : c * (tw + gap) + tw] = tile
    return _png(sheet)
