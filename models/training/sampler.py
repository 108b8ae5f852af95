"""Two-stream patch sampler: labeled (image, label) crops and unlabeled image crops.

Volumes are numpy arrays already preprocessed by the data pipeline: images ``(X, Y, Z)`` (one channel)
or ``(C, X, Y, Z)`` float32, labels ``(X, Y, Z)`` uint8. A volume smaller than the patch is zero-padded
(symmetrically) to the patch size once, at construction. All randomness comes from the sampler's own
CPU ``torch.Generator`` so a run is reproducible and resumable (:meth:`state_dict`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

#: ``(image (C, *patch), label (*patch) | None, seed) -> (image, label)``: models/data/augment.py
CropAugment = Callable[[np.ndarray, np.ndarray | None, int], tuple[np.ndarray, np.ndarray | None]]


def _as_channels_first(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:
        return image[None]
    if image.ndim == 4:
        return image
    raise ValueError(f"image must be (X, Y, Z) or (C, X, Y, Z), got shape {image.shape}")


def pad_to_patch(
    image: np.ndarray, label: np.ndarray | None, patch_size: Sequence[int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Zero-pad ``image (C, X, Y, Z)`` (and ``label (X, Y, Z)``) so every spatial axis >= the patch."""
    spatial = image.shape[1:]
    pads = []
    for size, p in zip(spatial, patch_size, strict=True):
        extra = max(p - size, 0)
        pads.append((extra // 2, extra - extra // 2))
    if not any(a or b for a, b in pads):
        return image, label
    image = np.pad(image, [(0, 0), *pads], mode="constant")
    if label is not None:
        label = np.pad(label, pads, mode="constant")
    return image, label


class TwoStreamSampler:
    """Draws a batch of ``batch_labeled`` labeled + ``batch_unlabeled`` unlabeled random crops.

    ``sample() -> (images (B_l + B_u, C, *patch) float32, labels (B_l, *patch) int64)``, labeled crops
    first. Cases are drawn uniformly with replacement. With probability ``foreground_prob`` a labeled
    crop is centred (clamped to the volume) on a random foreground voxel (label > 0), otherwise its
    position is uniform. With ``flip`` each crop is mirrored along each spatial axis with probability 0.5
    (image and label together). ``augment`` (models/data/augment.py) then perturbs each crop with a seed
    drawn from the sampler's generator.
    """

    def __init__(
        self,
        labeled: Sequence[tuple[np.ndarray, np.ndarray]],
        unlabeled: Sequence[np.ndarray],
        patch_size: Sequence[int],
        batch_labeled: int,
        batch_unlabeled: int,
        seed: int = 0,
        foreground_prob: float = 0.0,
        flip: bool = False,
        augment: CropAugment | None = None,
    ) -> None:
        if batch_labeled > 0 and not labeled:
            raise ValueError("batch_labeled > 0 but no labeled volume was given")
        if batch_unlabeled > 0 and not unlabeled:
            raise ValueError("batch_unlabeled > 0 but no unlabeled volume was given")
        self.patch_size = tuple(int(p) for p in patch_size)
        self.batch_labeled = batch_labeled
        self.batch_unlabeled = batch_unlabeled
        self.foreground_prob = foreground_prob
        self.flip = flip
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)
        self.labeled: list[tuple[np.ndarray, np.ndarray]] = []
        self.foreground: list[np.ndarray] = []
        channels: set[int] = set()
        for image, label in labeled:
            img = _as_channels_first(np.asarray(image, dtype=np.float32))
            if img.shape[1:] != label.shape:
                raise ValueError(f"image {img.shape[1:]} and label {label.shape} shapes differ")
            img, lab = pad_to_patch(img, np.asarray(label), self.patch_size)
            assert lab is not None
            self.labeled.append((img, lab))
            self.foreground.append(np.flatnonzero(lab > 0))
            channels.add(img.shape[0])
        self.unlabeled: list[np.ndarray] = []
        for image in unlabeled:
            img, _ = pad_to_patch(_as_channels_first(np.asarray(image, dtype=np.float32)), None,
                                  self.patch_size)
            self.unlabeled.append(img)
            channels.add(img.shape[0])
        if len(channels) > 1:
            raise ValueError(f"volumes have different channel counts: {sorted(channels)}")

    def _randint(self, high: int) -> int:
        """Uniform integer in ``[0, high)``."""
        return int(torch.randint(0, high, (1,), generator=self.generator))

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def _start(self, spatial: Sequence[int], centre: Sequence[int] | None) -> list[int]:
        starts = []
        for axis, (size, p) in enumerate(zip(spatial, self.patch_size, strict=True)):
            if centre is None:
                starts.append(self._randint(size - p + 1))
            else:
                starts.append(min(max(centre[axis] - p // 2, 0), size - p))
        return starts

    def _crop(self, image: np.ndarray, label: np.ndarray | None, starts: Sequence[int]
              ) -> tuple[np.ndarray, np.ndarray | None]:
        sl = tuple(slice(s, s + p) for s, p in zip(starts, self.patch_size, strict=True))
        img = image[(slice(None), *sl)]
        lab = label[sl] if label is not None else None
        if self.flip:
            for axis in range(3):
                if self._uniform() < 0.5:
                    img = np.flip(img, axis=axis + 1)
                    if lab is not None:
                        lab = np.flip(lab, axis=axis)
        if self.augment is not None:
            img, lab = self.augment(img, lab, self._randint(2**31 - 1))
        return img, lab

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images (B_l + B_u, C, *patch) float32, labels (B_l, *patch) int64)`` on the CPU."""
        images: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        for _ in range(self.batch_labeled):
            i = self._randint(len(self.labeled))
            image, label = self.labeled[i]
            centre = None
            fg = self.foreground[i]
            if self.foreground_prob > 0 and fg.size and self._uniform() < self.foreground_prob:
                flat = int(fg[self._randint(fg.size)])
                centre = [int(c) for c in np.unravel_index(flat, label.shape)]
            img, lab = self._crop(image, label, self._start(label.shape, centre))
            assert lab is not None
            images.append(np.ascontiguousarray(img))
            labels.append(np.ascontiguousarray(lab))
        for _ in range(self.batch_unlabeled):
            image = self.unlabeled[self._randint(len(self.unlabeled))]
            img, _ = self._crop(image, None, self._start(image.shape[1:], None))
            images.append(np.ascontiguousarray(img))
        x = torch.from_numpy(np.stack(images)).float()
        y = torch.from_numpy(np.stack(labels).astype(np.int64)) if labels else torch.zeros(
            (0, *self.patch_size), dtype=torch.int64)
        return x, y

    def state_dict(self) -> dict[str, torch.Tensor]:
        """RNG state (a uint8 tensor) — safe for ``torch.load(weights_only=True)``."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the RNG state saved by :meth:`state_dict`."""
        self.generator.set_state(state["generator"])
