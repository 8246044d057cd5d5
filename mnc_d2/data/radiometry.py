"""How a file's digital numbers (DNs) become the values the model normalises (INPUT.DN_TRANSFORM).

The model's input is ``(f(DN) - PIXEL_MEAN) / PIXEL_STD`` per band, with ``f`` one of:

- ``""`` (default): the DNs as read, ``f(x) = x``; the original MNC subtracts the mean of 8-bit
  values the same way.
- ``"log"``: ``f(x) = log(1 + max(x, 0))`` per band. Reflectance, illumination and shadow
  combine by multiplication (a building's shadow scales whatever lies under it by one factor,
  a dimmer scene scales every pixel), so after the log a shadow or a change of illumination is
  an offset of the same size on every surface and every band, while a material (a dark roof
  against asphalt) keeps its band-to-band differences. The log also spreads the dark end of
  the range, where dark roofs, asphalt and shadow lie, and compresses the bright end. An
  approximation of a physical model: ``1 +`` keeps zero DNs finite, the sensor's offset and
  the atmosphere's path radiance (additive, not multiplicative) are ignored.
- ``"sqrt"``: ``f(x) = sqrt(max(x, 0))`` per band, the variance-stabilising transform of
  photon (shot) noise: a milder spreading of the dark end than the log's, and a milder
  compression of the bright end (the log lifts dark roofs on imagery where they are dark in
  every band but costs small buildings there, BENCHMARKS.md section 1). Not yet benchmarked.

``MODEL.PIXEL_MEAN/STD`` are then statistics of ``f(DN)``: ``INPUT.BAND_STATS: auto`` computes
them after the transform (:mod:`.band_stats`), and a mean outside the transform's range is
refused. Every reader of model input applies the same ``f`` after reading: the training mapper
(after the radiometric jitter and roof recolouring, which act on DNs, and before the resize),
the evaluation mapper, ``tools/predict.py`` (eager and exported models: the export records the
transform in ``export.json``) and the int8 calibration. Nodata pixels are filled, before ``f``,
with ``f``'s inverse of PIXEL_MEAN, so they normalise to 0 as without a transform.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DN_TRANSFORMS", "DNTransform", "dn_transform", "dn_transform_from_config"]



def _log_dn(x):
    return np.log1p(np.maximum(x, 0))


def _sqrt_dn(x):
    return np.sqrt(np.maximum(x, 0))


# name -> (forward, inverse, largest forward value of a 16-bit DN): the values a band can take.
DN_TRANSFORMS = {
    "": (None, None, float(np.iinfo(np.uint16).max)),
    "log": (_log_dn, np.expm1, float(_log_dn(np.iinfo(np.uint16).max))),
    "sqrt": (_sqrt_dn, np.square, float(_sqrt_dn(np.iinfo(np.uint16).max))),
}


@dataclass(frozen=True)
class DNTransform:
    """One INPUT.DN_TRANSFORM: ``forward`` on images, ``inverse`` on per-band values."""

    kind: str = ""

    def __post_init__(self):
        if self.kind not in DN_TRANSFORMS:
            raise ValueError(f"INPUT.DN_TRANSFORM={self.kind!r}: choose from "
                             f"{', '.join(repr(k) for k in DN_TRANSFORMS)}")

    @property
    def identity(self) -> bool:
        return DN_TRANSFORMS[self.kind][0] is None

    def forward(self, image):
        """``f`` of an image of DNs, any shape (numpy or masked array); float32 stays float32."""
        if self.identity:
            return image
        out = DN_TRANSFORMS[self.kind][0](image)
        return out.astype(np.float32, copy=False) if image.dtype == np.float32 else out

    def inverse(self, values) -> list[float]:
        """The DNs that ``forward`` maps to ``values`` (per band, e.g. PIXEL_MEAN: the fill of
        nodata pixels before the transform)."""
        values = np.asarray(values, dtype=np.float64)
        if not self.identity:
            values = DN_TRANSFORMS[self.kind][1](values)
        return [float(v) for v in values]

    def augmentation(self):
        """The transform as a Detectron2 image-only transform (for the mapper's list)."""
        from detectron2.data import transforms as T  # here: exported models run without it

        return T.ColorTransform(self.forward)

    def check_means(self, means, key: str = "MODEL.PIXEL_MEAN") -> None:
        """Refuse per-band means the transform cannot produce (DN-scale means with "log")."""
        if self.identity:
            return
        top = DN_TRANSFORMS[self.kind][2]
        bad = [float(m) for m in means if not 0.0 <= float(m) <= top]
        if bad:
            raise ValueError(
                f"{key}={[float(m) for m in means]} with INPUT.DN_TRANSFORM={self.kind!r}: "
                f"{bad} lie outside what the transform gives (0 to {top:.2f}); give statistics "
                "of the transformed values or set INPUT.BAND_STATS auto")


def dn_transform(kind: str | None) -> DNTransform:
    """The transform named ``kind`` ("" or None: none)."""
    return DNTransform(str(kind or ""))


def dn_transform_from_config(cfg) -> DNTransform:
    """INPUT.DN_TRANSFORM of a run's config, its PIXEL_MEAN checked against it."""
    transform = dn_transform(cfg.INPUT.get("DN_TRANSFORM", ""))
    transform.check_means(cfg.MODEL.PIXEL_MEAN)
    return transform


def training_spread(cfg) -> list[float]:
    """(C,) the training imagery's spread per band on the model's input scale: band_stats.json's
    std, which MODEL.PIXEL_STD holds divided by INPUT.BAND_STATS_TARGET_STD (predict.py
    --match-radiometry maps scenes onto it; exports record it as ``data_std``)."""
    return [float(v) * float(cfg.INPUT.BAND_STATS_TARGET_STD) for v in cfg.MODEL.PIXEL_STD]
