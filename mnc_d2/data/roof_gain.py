"""Roof recolouring at training time: other roof spectra on the training city's buildings.

Dark roofs were the seed's worst failure, and a model that learns roofs by the spectra of one
city's materials misses roofs of another (an 8-band model trained where dark roofs are bright in
the near infrared finds none of those that are dark in every band, and the other way round).
:class:`RandomRoofGain` draws, per training image, which buildings get a new roof spectrum: with
probability ``prob`` per building, every band of the pixels inside its footprint is multiplied by

    g_c = shared * spread_c,   shared ~ log-uniform(gain_range),
                               spread_c ~ log-uniform(1 / band_spread, band_spread), per band c

(``band_spread`` 1.0: one gain for all bands, the roof only darker or brighter). The roof's
texture and edges are kept; the building then has to be found by its shape, edges and shadow as
much as by its colour. A domain randomisation of roof spectra, and an approximation of a roof of
another material: the whole footprint as labelled is scaled (at nadir: the roof), the building's
walls, shadow and its surroundings are not changed, and no new shading is drawn. Pixels equal to
``keep`` (nodata already filled, with the DNs of PIXEL_MEAN) are left as they are.

Applied by :class:`~mnc_d2.data.mapper.SpaceNetDatasetMapper` to the image as read, before any
geometric augmentation, because the footprints are then in the image's own pixel coordinates.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_util

from .radiometry import dn_transform_from_config

__all__ = ["RandomRoofGain", "footprint_mask", "footprint_window", "roof_gain_from_config"]


def footprint_window(segmentation, height: int, width: int) -> tuple[slice, slice, np.ndarray]:
    """One annotation's footprint as ``(rows, cols, mask)``: the window of the (H, W) image that
    holds it and its (h, w) bool mask there. ``segmentation``: a polygon list
    ``[[x0, y0, x1, y1, ...], ...]`` (pixel coordinates; rasterised in the window only, shifted
    by whole pixels: the pixels rasterising on the whole image gives, but for floating-point
    rounding on the boundary, 1 pixel in about a million on the synthetic training tiles) or a
    COCO RLE dict (footprints with holes; decoded at the image's size)."""
    if isinstance(segmentation, dict):
        rle = segmentation
        if isinstance(rle.get("counts"), list):  # uncompressed RLE
            rle = mask_util.frPyObjects(rle, *rle["size"])
        mask = mask_util.decode(rle).astype(bool)
        if mask.shape != (height, width):
            raise ValueError(f"RLE segmentation of size {mask.shape} on an image of size "
                             f"{(height, width)}; the annotation belongs to another raster")
        return slice(0, height), slice(0, width), mask
    polygons = [np.asarray(p, dtype=np.float64) for p in segmentation if len(p) >= 6]
    if not polygons:
        return slice(0, 0), slice(0, 0), np.zeros((0, 0), dtype=bool)
    xy = np.concatenate(polygons).reshape(-1, 2)
    x0, y0 = (max(int(np.floor(v)) - 1, 0) for v in xy.min(axis=0))
    x1 = min(int(np.ceil(xy[:, 0].max())) + 1, width)
    y1 = min(int(np.ceil(xy[:, 1].max())) + 1, height)
    if x1 <= x0 or y1 <= y0:  # wholly outside the image
        return slice(0, 0), slice(0, 0), np.zeros((0, 0), dtype=bool)
    shift = np.array([x0, y0], dtype=np.float64)
    local = [(p.reshape(-1, 2) - shift).ravel() for p in polygons]
    # the union of the parts, as Detectron2 rasterises polygon annotations for the masks
    rle = mask_util.merge(mask_util.frPyObjects(local, y1 - y0, x1 - x0))
    return slice(y0, y1), slice(x0, x1), mask_util.decode(rle).astype(bool)


def footprint_mask(segmentation, height: int, width: int) -> np.ndarray:
    """The (H, W) bool mask of one annotation's ``segmentation`` (see :func:`footprint_window`)."""
    rows, cols, window = footprint_window(segmentation, height, width)
    mask = np.zeros((height, width), dtype=bool)
    mask[rows, cols] = window
    return mask


class RandomRoofGain:
    """Recolour the roofs of randomly chosen buildings (see the module docstring).

    Args:
        prob: probability per building that its roof is recoloured (0 < prob <= 1).
        gain_range: (low, high) of the shared gain, drawn log-uniformly.
        band_spread: >= 1; each band's gain is the shared one times a factor drawn
            log-uniformly from [1 / band_spread, band_spread].
        keep: per-band fill value (nodata set to PIXEL_MEAN) left untouched, or None.
    """

    def __init__(self, prob: float, gain_range=(0.1, 0.5), band_spread: float = 1.0, keep=None):
        if not 0.0 < prob <= 1.0:
            raise ValueError(f"INPUT.AUGMENT.ROOF_GAIN.PROB={prob}: expected 0 < prob <= 1 "
                             "(0 switches it off)")
        lo, hi = (float(v) for v in gain_range)
        if not 0.0 < lo <= hi:
            raise ValueError(f"INPUT.AUGMENT.ROOF_GAIN.RANGE={tuple(gain_range)}: expected "
                             "0 < low <= high")
        if band_spread < 1.0:
            raise ValueError(f"INPUT.AUGMENT.ROOF_GAIN.BAND_SPREAD={band_spread}: expected >= 1 "
                             "(1.0 = one gain for all bands)")
        self.prob, self.gain_range, self.band_spread = float(prob), (lo, hi), float(band_spread)
        self.keep = None if keep is None else np.asarray(keep, dtype=np.float32)

    def __repr__(self) -> str:
        return (f"RandomRoofGain(prob={self.prob}, gain_range={self.gain_range}, "
                f"band_spread={self.band_spread})")

    def draw_gains(self, num_bands: int, rng=np.random) -> np.ndarray:
        """(C,) gains of one roof."""
        lo, hi = np.log(self.gain_range)
        shared = np.exp(rng.uniform(lo, hi)) if hi > lo else np.exp(lo)
        s = np.log(self.band_spread)
        spread = np.exp(rng.uniform(-s, s, size=num_bands)) if s > 0 else np.ones(num_bands)
        return (shared * spread).astype(np.float32)

    def __call__(self, image: np.ndarray, annotations: list[dict], rng=np.random) -> np.ndarray:
        """Return a recoloured copy of ``image`` (H, W, C) float32, or ``image`` itself when no
        building was drawn. ``annotations``: Detectron2 annotation dicts in the image's pixel
        coordinates (crowd regions and boxes without a segmentation are skipped)."""
        chosen = [a for a in annotations if not a.get("iscrowd", 0) and a.get("segmentation")
                  and rng.uniform() < self.prob]
        if not chosen:
            return image
        h, w, c = image.shape
        out = np.array(image, dtype=np.float32, copy=True)
        for anno in chosen:
            rows, cols, mask = footprint_window(anno["segmentation"], h, w)
            if self.keep is not None:  # nodata fill inside the footprint stays as read
                mask &= ~np.all(image[rows, cols] == self.keep, axis=2)
            window = out[rows, cols]  # a view: scaled in place
            window[mask] *= self.draw_gains(c, rng)
        return out


def roof_gain_from_config(cfg, keep: list[float] | None = None) -> RandomRoofGain | None:
    """INPUT.AUGMENT.ROOF_GAIN as a :class:`RandomRoofGain`, or None when PROB is 0. ``keep``:
    the DNs nodata was filled with (the mapper's fill: PIXEL_MEAN before INPUT.DN_TRANSFORM;
    None: computed from cfg)."""
    rg = cfg.INPUT.AUGMENT.ROOF_GAIN
    if rg.PROB <= 0.0:
        return None
    if keep is None:
        keep = dn_transform_from_config(cfg).inverse(cfg.MODEL.PIXEL_MEAN)
    return RandomRoofGain(float(rg.PROB), tuple(rg.RANGE), float(rg.BAND_SPREAD), keep=keep)
