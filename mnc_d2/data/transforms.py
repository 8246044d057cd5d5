"""Augmentation for overhead imagery: 90-degree rotations (flips and scale jitter use
Detectron2's own ``RandomFlip`` and ``ResizeScale``), radiometric jitter per band and band
dropout."""

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


class RadiometricTransform(Transform):
    """A transform of pixel values only: coordinates and segmentations pass unchanged, and the
    inverse (used for geometry) is a no-op."""

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> Transform:
        return NoOpTransform()


class BandPhotometricTransform(RadiometricTransform):
    """Radiometric change of an (H, W, C) image of non-negative values (DNs or reflectance).

    Per band c, in this order: gamma ``x' = ref_c * (x / ref_c) ** gamma`` (``ref_c``: the
    band's maximum in this image, so the curve bends the image's own range, dark values most);
    contrast about the band's mean, ``m_c + (x - m_c) * contrast``; gain ``x * brightness *
    band_gain[c]`` (one brightness for all bands, one gain per band: the sensor and the
    atmosphere change bands differently). Values stay >= 0. Pixels equal to ``keep`` (a per-band
    fill value, e.g. nodata already set to PIXEL_MEAN) are left untouched. Geometry is unchanged.
    """

    def __init__(self, brightness: float, contrast: float, gamma: float, band_gain,
                 keep=None):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        x = np.asarray(img, dtype=np.float32)
        out = np.maximum(x, 0.0)
        if self.gamma != 1.0:
            ref = np.maximum(out.reshape(-1, out.shape[2]).max(axis=0), 1e-6)  # (C,)
            out = ref * (out / ref) ** self.gamma
        if self.contrast != 1.0:
            mean = out.reshape(-1, out.shape[2]).mean(axis=0)
            out = mean + (out - mean) * self.contrast
        gain = self.brightness * np.asarray(self.band_gain, dtype=np.float32)
        out = np.maximum(out * gain, 0.0).astype(np.float32)
        if self.keep is not None:
            fill = np.all(x == np.asarray(self.keep, dtype=np.float32), axis=2)
            out[fill] = x[fill]
        return out


class RandomBandPhotometric(T.Augmentation):
    """Random :class:`BandPhotometricTransform`: brightness, contrast and gamma drawn uniformly
    from their ranges (gamma log-uniformly), an independent gain per band from ``band_gain``.
    Ranges of (1.0, 1.0) switch a part off. ``keep``: per-band fill value left untouched."""

    def __init__(self, brightness=(1.0, 1.0), contrast=(1.0, 1.0), gamma=(1.0, 1.0),
                 band_gain=(1.0, 1.0), keep=None):
        super().__init__()
        for name, (lo, hi) in (("BRIGHTNESS", brightness), ("CONTRAST", contrast),
                               ("GAMMA", gamma), ("BAND_GAIN", band_gain)):
            if not 0 < lo <= hi:
                raise ValueError(f"INPUT.AUGMENT.{name}={(lo, hi)}: expected 0 < low <= high")
        self._init(locals())

    def get_transform(self, image):
        def draw(lo, hi):
            return float(np.random.uniform(lo, hi)) if hi > lo else float(lo)

        lo, hi = self.gamma
        gamma = float(np.exp(np.random.uniform(np.log(lo), np.log(hi)))) if hi > lo else lo
        gains = [draw(*self.band_gain) for _ in range(image.shape[2])]
        return BandPhotometricTransform(draw(*self.brightness), draw(*self.contrast), gamma,
                                        gains, self.keep)


class BandDropTransform(RadiometricTransform):
    """Set the channels ``channels`` (0-based positions in an (H, W, C) image) to ``fill``
    (one value per channel listed, e.g. their PIXEL_MEAN, which normalises to 0). Geometry is
    unchanged."""

    def __init__(self, channels: list[int], fill: list[float]):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        out = np.array(img, dtype=np.float32, copy=True)
        out[..., self.channels] = np.asarray(self.fill, dtype=np.float32)
        return out


class RandomBandDrop(T.Augmentation):
    """With probability ``prob`` per image, :class:`BandDropTransform` of ``channels`` to
    ``fill``; otherwise nothing."""

    def __init__(self, prob: float, channels: list[int], fill: list[float]):
        super().__init__()
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"INPUT.AUGMENT.BAND_DROPOUT.PROB={prob}: expected 0 <= prob <= 1")
        self._init(locals())

    def get_transform(self, image):
        if np.random.uniform() < self.prob:
            return BandDropTransform(self.channels, self.fill)
        return NoOpTransform()


def band_dropout_from_config(cfg, bands: list[int]) -> RandomBandDrop | None:
    """INPUT.AUGMENT.BAND_DROPOUT as an augmentation over the model's input ``bands`` (1-based
    file bands, in input order), or None when it is off. A listed band the model does not read
    is an error naming the key."""
    drop = cfg.INPUT.AUGMENT.BAND_DROPOUT
    if drop.PROB <= 0.0:
        return None
    if not drop.BANDS:
        raise ValueError("INPUT.AUGMENT.BAND_DROPOUT.PROB > 0 needs INPUT.AUGMENT.BAND_DROPOUT."
                         "BANDS, the file bands to drop, e.g. (6, 7, 8)")
    missing = [b for b in drop.BANDS if b not in bands]
    if missing:
        raise ValueError(f"INPUT.AUGMENT.BAND_DROPOUT.BANDS={tuple(drop.BANDS)}: band(s) "
                         f"{missing} are not among the model's input bands {bands} (INPUT.BANDS)")
    if len(set(drop.BANDS)) == len(bands):
        raise ValueError(f"INPUT.AUGMENT.BAND_DROPOUT.BANDS={tuple(drop.BANDS)} drops every input "
                         "band; keep at least one")
    channels = [bands.index(b) for b in drop.BANDS]
    return RandomBandDrop(float(drop.PROB), channels,
                          [float(cfg.MODEL.PIXEL_MEAN[c]) for c in channels])
