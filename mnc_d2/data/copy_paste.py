"""Copy-paste at training time: other tiles' buildings, resized, pasted among this tile's.

A model trained on one city learns the sizes, spacing and surroundings its buildings come with;
imagery drawn differently (smaller buildings packed closer, among clutter) then loses buildings
at the proposal stage first. :class:`RandomCopyPaste` adds, per training image (with probability
``prob``), buildings taken from another training image of the same datasets:

- each of the donor's buildings is taken with probability ``object_prob`` (at most
  ``max_objects`` per image), resized by a factor drawn log-uniformly from ``scale_range``
  (its pixels bilinearly, its footprint by nearest neighbour; the pasted pixels are exactly the
  footprint the new annotation holds, so pixels and label agree);
- it is placed at a random position wholly inside the image where it overlaps no building of
  the image and none pasted before it, with a margin of ``gap`` pixels kept clear around
  every building, so at least ``2 * gap`` pixels lie between two (up to
  ``tries`` positions are drawn; an object that fits nowhere is left out): at nadir buildings do
  not occlude each other, so no existing label is cut;
- its annotation is the pasted footprint as COCO RLE (holes kept), category as in the donor.

After Ghiasi et al., "Simple Copy-Paste is a Strong Data Augmentation Method for Instance
Segmentation" (CVPR 2021), with two departures named here: objects are placed one by one at
random free positions (the paper pastes one image's chosen objects at their own positions over
the other and cuts the occluded labels), and each object gets its own scale. An approximation of
a building in another place: only the footprint's pixels travel, not the shadow or walls the
building casts next to it, and the pasted roof is not blended into its new surroundings. Pixels
equal to ``keep`` (nodata filled with PIXEL_MEAN's DNs) are not pasted.

Applied by :class:`~mnc_d2.data.mapper.SpaceNetDatasetMapper` to the image as read (DNs, before
INPUT.DN_TRANSFORM and every geometric augmentation), so donor and image share their units.
Requires ``INPUT.MASK_FORMAT bitmask`` (the pasted footprints are RLE).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np
from detectron2.structures import BoxMode
from pycocotools import mask as mask_util

from .roof_gain import footprint_window

__all__ = ["RandomCopyPaste", "copy_paste_from_config"]

logger = logging.getLogger(__name__)


def _usable(anno: dict) -> bool:
    return not anno.get("iscrowd", 0) and bool(anno.get("segmentation"))


class RandomCopyPaste:
    """Paste buildings of other training images into this one (see the module docstring).

    Args:
        donors: dataset dicts (Detectron2 format, ``file_name`` and ``annotations``, optionally
            ``window``) to take buildings from, or a callable returning them (called once, on
            first use: each data-loader worker loads its own list).
        read: ``read(dataset_dict) -> (H, W, C) float32`` image as the mapper reads it.
        prob: probability per training image that buildings are pasted (0 < prob <= 1).
        object_prob: probability per donor building that it is taken (0 < object_prob <= 1).
        max_objects: at most this many buildings pasted per image (>= 1).
        scale_range: (low, high), 0 < low <= high: each building's resize factor, log-uniform.
        gap: margin in pixels kept clear around every building, pasted or not (>= 0): a
            pasted building and any other have at least ``2 * gap`` pixels between them.
        tries: random positions drawn per building before it is left out (>= 1).
        keep: per-band fill value (nodata set to PIXEL_MEAN) not pasted, or None.
    """

    def __init__(self, donors: Sequence[dict] | Callable[[], Sequence[dict]],
                 read: Callable[[dict], np.ndarray], prob: float = 0.5,
                 object_prob: float = 0.5, max_objects: int = 20,
                 scale_range=(0.667, 1.5), gap: int = 2, tries: int = 10, keep=None):
        if not 0.0 < prob <= 1.0:
            raise ValueError(f"INPUT.AUGMENT.COPY_PASTE.PROB={prob}: expected 0 < prob <= 1 "
                             "(0 switches it off)")
        if not 0.0 < object_prob <= 1.0:
            raise ValueError(f"INPUT.AUGMENT.COPY_PASTE.OBJECT_PROB={object_prob}: expected "
                             "0 < object_prob <= 1")
        if int(max_objects) < 1:
            raise ValueError(f"INPUT.AUGMENT.COPY_PASTE.MAX_OBJECTS={max_objects}: expected >= 1")
        lo, hi = (float(v) for v in scale_range)
        if not 0.0 < lo <= hi:
            raise ValueError(f"INPUT.AUGMENT.COPY_PASTE.SCALE_RANGE={tuple(scale_range)}: "
                             "expected 0 < low <= high")
        if int(gap) < 0 or int(tries) < 1:
            raise ValueError(f"INPUT.AUGMENT.COPY_PASTE.GAP={gap} / TRIES={tries}: expected "
                             "GAP >= 0 and TRIES >= 1")
        self._source = donors
        self._donors: list[dict] | None = None
        self.read = read
        self.prob, self.object_prob, self.max_objects = float(prob), float(object_prob), \
            int(max_objects)
        self.scale_range, self.gap, self.tries = (lo, hi), int(gap), int(tries)
        self.keep = None if keep is None else np.asarray(keep, dtype=np.float32)

    def __repr__(self) -> str:
        return (f"RandomCopyPaste(prob={self.prob}, object_prob={self.object_prob}, "
                f"max_objects={self.max_objects}, scale_range={self.scale_range}, "
                f"gap={self.gap})")

    @property
    def donors(self) -> list[dict]:
        """The donor dataset dicts that hold at least one usable building."""
        if self._donors is None:
            source = self._source() if callable(self._source) else self._source
            self._donors = [d for d in source if any(map(_usable, d.get("annotations", [])))]
        return self._donors

    def _occupancy(self, annotations: list[dict], h: int, w: int) -> np.ndarray:
        """(H, W) bool: the image's buildings grown by their ``gap`` pixel margin."""
        occupied = np.zeros((h, w), dtype=np.uint8)
        for anno in annotations:
            if anno.get("segmentation"):
                rows, cols, mask = footprint_window(anno["segmentation"], h, w)
                occupied[rows, cols] |= mask.astype(np.uint8)
            elif "bbox" in anno:  # a box without a footprint: keep clear of the box
                x0, y0, x1, y1 = BoxMode.convert(anno["bbox"], anno.get("bbox_mode", 0),
                                                 BoxMode.XYXY_ABS)
                occupied[max(int(y0), 0):int(math.ceil(y1)),
                         max(int(x0), 0):int(math.ceil(x1))] = 1
        return self._grow(occupied)

    def _grow(self, mask: np.ndarray) -> np.ndarray:
        if self.gap == 0:
            return mask.astype(bool)
        kernel = np.ones((2 * self.gap + 1, 2 * self.gap + 1), dtype=np.uint8)
        return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)

    def _objects(self, donor: dict, image: np.ndarray, rng) -> list[tuple]:
        """The donor's chosen buildings as ``(pixels (h, w, C), footprint (h, w) bool,
        category_id)``, already resized."""
        h, w = image.shape[:2]
        out = []
        for anno in donor.get("annotations", []):
            if not _usable(anno) or rng.uniform() >= self.object_prob:
                continue
            rows, cols, mask = footprint_window(anno["segmentation"], h, w)
            if not mask.any():
                continue
            ys, xs = np.nonzero(mask)  # crop to the footprint (an RLE's window is the image)
            r0, r1, c0, c1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            mask = mask[r0:r1, c0:c1]
            pixels = image[rows, cols][r0:r1, c0:c1]
            if self.keep is not None:
                mask = mask & ~np.all(pixels == self.keep, axis=2)
            lo, hi = np.log(self.scale_range)
            s = float(np.exp(rng.uniform(lo, hi))) if hi > lo else float(np.exp(lo))
            size = (max(int(round(mask.shape[1] * s)), 1), max(int(round(mask.shape[0] * s)), 1))
            if s != 1.0:
                pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_LINEAR)
                if pixels.ndim == 2:  # cv2 drops a single channel
                    pixels = pixels[:, :, None]
                mask = cv2.resize(mask.astype(np.uint8), size,
                                  interpolation=cv2.INTER_NEAREST).astype(bool)
            if mask.any():
                out.append((pixels, mask, int(anno.get("category_id", 0))))
            if len(out) >= self.max_objects:
                break
        return out

    def __call__(self, image: np.ndarray, annotations: list[dict], rng=np.random
                 ) -> tuple[np.ndarray, list[dict]]:
        """Return ``(image, annotations)`` with buildings pasted: a new (H, W, C) float32 image
        and the annotations with the pasted ones appended (RLE, ``BoxMode.XYWH_ABS``), or the
        inputs themselves when nothing was pasted."""
        if rng.uniform() >= self.prob or not self.donors:
            return image, annotations
        donor = self.donors[rng.randint(len(self.donors))]
        donor_image = self.read(donor)
        if donor_image.shape[2] != image.shape[2]:
            raise ValueError(f"copy-paste donor {donor.get('file_name')} gives "
                             f"{donor_image.shape[2]} band(s), the image {image.shape[2]}")
        objects = self._objects(donor, donor_image, rng)
        if not objects:
            return image, annotations
        h, w = image.shape[:2]
        # padded by the gap on every side: a footprint at (y, x) of the image, grown by the
        # gap, covers rows y to y + its grown height of this array, never beyond it
        occupied = np.pad(self._occupancy(annotations, h, w), self.gap)
        out, pasted = None, []
        for pixels, mask, category in objects:
            mh, mw = mask.shape
            if mh > h or mw > w:
                continue
            grown = self._grow(np.pad(mask, self.gap))
            gh, gw = grown.shape
            for _ in range(self.tries):
                y, x = rng.randint(h - mh + 1), rng.randint(w - mw + 1)
                if not (occupied[y:y + gh, x:x + gw] & grown).any():
                    break
            else:
                continue  # no free place for it
            if out is None:
                out = np.array(image, dtype=np.float32, copy=True)
            window = out[y:y + mh, x:x + mw]  # a view: pasted in place
            window[mask] = pixels[mask]
            occupied[y:y + gh, x:x + gw] |= grown
            full = np.zeros((h, w), dtype=np.uint8)
            full[y:y + mh, x:x + mw] = mask
            rle = mask_util.encode(np.asfortranarray(full))
            rle["counts"] = rle["counts"].decode("ascii")
            ys, xs = np.nonzero(mask)
            pasted.append({"segmentation": rle, "category_id": category, "iscrowd": 0,
                           "bbox": [float(x + xs.min()), float(y + ys.min()),
                                    float(xs.max() - xs.min() + 1),
                                    float(ys.max() - ys.min() + 1)],
                           "bbox_mode": BoxMode.XYWH_ABS, "copy_pasted": True})
        if out is None:
            return image, annotations
        return out, list(annotations) + pasted


def copy_paste_from_config(cfg, read: Callable[[dict], np.ndarray],
                           keep: list[float] | None = None) -> RandomCopyPaste | None:
    """INPUT.AUGMENT.COPY_PASTE as a :class:`RandomCopyPaste` over the training datasets
    (cfg.DATASETS.TRAIN, loaded on first use), or None when PROB is 0. ``read``: the mapper's
    reader of a dataset dict; ``keep``: the DNs nodata was filled with."""
    cp = cfg.INPUT.AUGMENT.COPY_PASTE
    if cp.PROB <= 0.0:
        return None
    if cfg.INPUT.MASK_FORMAT != "bitmask":
        raise ValueError(f"INPUT.AUGMENT.COPY_PASTE.PROB={cp.PROB} needs INPUT.MASK_FORMAT "
                         f"bitmask (pasted footprints are RLE), not {cfg.INPUT.MASK_FORMAT!r}")
    return RandomCopyPaste(_DatasetDonors(tuple(cfg.DATASETS.TRAIN)), read,
                           prob=float(cp.PROB), object_prob=float(cp.OBJECT_PROB),
                           max_objects=int(cp.MAX_OBJECTS), scale_range=tuple(cp.SCALE_RANGE),
                           gap=int(cp.GAP), tries=int(cp.TRIES), keep=keep)


class _DatasetDonors:
    """The dataset dicts of registered datasets, loaded when called (a class, not a closure:
    the mapper pickles into data-loader workers started by spawn)."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names

    def __call__(self) -> list[dict]:
        from detectron2.data import DatasetCatalog

        donors = [d for name in self.names for d in DatasetCatalog.get(name)]
        logger.info("copy-paste: %d donor images from %s", len(donors), list(self.names))
        return donors
