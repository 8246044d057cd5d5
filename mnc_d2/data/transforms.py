"""Geometric augmentation for overhead imagery: 90-degree rotations (flips and scale jitter use
Detectron2's own ``RandomFlip`` and ``ResizeScale``)."""

from __future__ import annotations

import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import NoOpTransform, Transform


class Rot90Transform(Transform):
    """Rotate an (H, W, ...) image counter-clockwise by ``k`` x 90 degrees.

    A pixel-frame point (x, y) of an h x w image maps to (y, w - x) per quarter turn.
    """

    def __init__(self, h: int, w: int, k: int):
        super().__init__()
        self._set_attributes(locals())
        self.k = k % 4

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.rot90(img, self.k, axes=(0, 1)))

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.asarray(coords, dtype=np.float64).copy()
        h, w = self.h, self.w
        for _ in range(self.k):
            x, y = coords[:, 0].copy(), coords[:, 1].copy()
            coords[:, 0], coords[:, 1] = y, w - x
            h, w = w, h
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self.apply_image(segmentation)

    def inverse(self) -> Transform:
        h, w = (self.w, self.h) if self.k % 2 else (self.h, self.w)
        return Rot90Transform(h, w, -self.k)


class RandomRot90(T.Augmentation):
    """Rotate by a uniformly random multiple of 90 degrees (overhead imagery has no 'up')."""

    def get_transform(self, image):
        k = int(np.random.randint(4))
        if k == 0:
            return NoOpTransform()
        h, w = image.shape[:2]
        return Rot90Transform(h, w, k)
