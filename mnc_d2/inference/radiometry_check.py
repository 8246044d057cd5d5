"""A scene far brighter or darker than the training imagery, warned about before it is predicted.

A model trained on SpaceNet's 11-bit DNs (band means of several hundred) sees an 8-bit export of
the same imagery (values up to 255: a web-map or QGIS export) or reflectances (0-1) as a nearly
black image and finds nothing, and the scene would still end as ``ok`` with 0 buildings. So each
scene's bands are sampled (:data:`SAMPLE_GRID` x :data:`SAMPLE_GRID` windows of
:data:`SAMPLE_PX` pixels spread over it: a few hundred kilobytes, also from object storage) and
their typical value compared with the training imagery's (MODEL.PIXEL_MEAN, through
INPUT.DN_TRANSFORM's inverse when there is one). When every band is more than :data:`FAR_FACTOR`
times off in the same direction, a warning names the scene, both sets of values and the likely
cause. Only a warning: imagery can be legitimately darker (a hazy or low-sun scene), and the
factor leaves room for that (this project's `hard` setting, darker in every band, stays inside
it).
"""

from __future__ import annotations

import logging

import numpy as np
from rasterio.windows import Window

logger = logging.getLogger(__name__)

SAMPLE_GRID = 3  # windows per side of the scene
SAMPLE_PX = 128  # pixels per side of a window
FAR_FACTOR = 4.0  # every band this many times darker or brighter than training: warned
# --match-radiometry estimates each band's mean and spread from more of the scene: the whole
# scene up to MATCH_GRID * SAMPLE_PX pixels a side (a SpaceNet tile), else MATCH_GRID x
# MATCH_GRID windows (about a megapixel, also from object storage)
MATCH_GRID = 8


def sample_windows(width: int, height: int, grid: int = SAMPLE_GRID) -> list[Window]:
    """``grid`` x ``grid`` windows (at most SAMPLE_PX a side) centred on an even grid."""
    side_w, side_h = min(SAMPLE_PX, width), min(SAMPLE_PX, height)
    out = []
    for fy in (np.arange(grid) + 0.5) / grid:
        for fx in (np.arange(grid) + 0.5) / grid:
            col = int(min(max(fx * width - side_w / 2, 0), width - side_w))
            row = int(min(max(fy * height - side_h / 2, 0), height - side_h))
            out.append(Window(col, row, side_w, side_h))
    return out


def _valid_pixels(src, bands: list[int], windows: list[Window]):
    """(C, N) masked float64 array of ``bands`` over ``windows`` of open dataset ``src``
    (nodata, mask and NaN pixels masked); None when a band has no valid pixel there."""
    values = [src.read(bands, window=w, masked=True) for w in windows]
    stack = np.ma.concatenate([v.reshape(len(bands), -1) for v in values], axis=1)
    stack = np.ma.masked_invalid(stack.astype(np.float64))
    if stack.count() == 0 or (stack.count(axis=1) == 0).any():
        return None
    return stack


def scene_levels(src, bands: list[int], dn) -> np.ndarray | None:
    """(len(bands),) typical value of each band of open dataset ``src`` on the DN scale:
    ``dn.inverse`` of the mean of ``dn.forward`` over the sampled valid pixels (the mean itself
    without a transform); None when no valid pixel was sampled."""
    stack = _valid_pixels(src, bands, sample_windows(src.width, src.height))
    if stack is None:
        return None
    means = np.ma.mean(dn.forward(np.ma.maximum(stack, 0)), axis=1)
    return np.asarray(dn.inverse(np.ma.filled(means, np.nan)), dtype=np.float64)


def scene_band_stats(src, bands: list[int], dn) -> tuple[np.ndarray, np.ndarray] | None:
    """((C,) mean, (C,) std) of each band of open dataset ``src`` over the sampled valid
    pixels, on the model's input scale (``dn.forward`` of the DNs, as INPUT.DN_TRANSFORM feeds
    the model); None when a band has no valid sampled pixel."""
    side = MATCH_GRID * SAMPLE_PX
    windows = ([Window(0, 0, src.width, src.height)] if src.width * src.height <= side * side
               else sample_windows(src.width, src.height, MATCH_GRID))
    stack = _valid_pixels(src, bands, windows)
    if stack is None:
        return None
    forward = dn.forward(np.ma.maximum(stack, 0))
    return (np.asarray(np.ma.mean(forward, axis=1), np.float64),
            np.asarray(np.ma.std(forward, axis=1), np.float64))


def matching_gain_offset(stats, target_mean, target_std) -> tuple[np.ndarray, np.ndarray]:
    """(C,) gain and offset that map a scene's band values (model input scale) so that their
    sampled mean and spread become the training imagery's: ``x * gain + offset``. A band
    without spread in the sample (constant) is only shifted."""
    mean, std = (np.asarray(v, np.float64) for v in stats)
    target_mean = np.asarray(target_mean, np.float64)
    target_std = np.asarray(target_std, np.float64)
    gain = np.where(std > 0, target_std / np.where(std > 0, std, 1.0), 1.0)
    return gain, target_mean - mean * gain


def radiometry_warning(levels, training, dtype: str, where: str) -> str | None:
    """The warning for a scene whose every band's typical value (``levels``) is more than
    FAR_FACTOR times below or above the training imagery's (``training``), else None."""
    if levels is None:
        return None
    levels, training = np.asarray(levels, float), np.asarray(training, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = levels / training
    if not np.isfinite(ratio).all() or (training <= 0).any():
        return None
    if (levels == 0).all():  # no factor to give: the sampled pixels are all 0
        return (f"{where}: every sampled pixel is 0 in every band the model reads; if 0 marks "
                "pixels without data, declare it as the file's nodata value (e.g. gdal_edit.py "
                "-a_nodata 0) so they are left out, else the scene holds no imagery to predict "
                "on")
    if (ratio < 1 / FAR_FACTOR).all():
        how, factor = "darker", float(np.exp(-np.mean(np.log(np.maximum(ratio, 1e-9)))))
    elif (ratio > FAR_FACTOR).all():
        how, factor = "brighter", float(np.exp(np.mean(np.log(ratio))))
    else:
        return None
    likely = {"uint8": "8-bit data: an export stretched to 0-255?",
              "float32": "floating-point data: reflectances?",
              "float64": "floating-point data: reflectances?"}.get(str(dtype), f"{dtype} data")
    shown = ", ".join(f"{v:.4g}" for v in levels)
    trained = ", ".join(f"{v:.4g}" for v in training)
    return (f"{where}: its bands' typical values ({shown}) are about {factor:.3g}x {how} than "
            f"the imagery the model was trained on ({trained}; MODEL.PIXEL_MEAN as DNs) "
            f"({likely}); the model will likely miss most buildings. Give it the imagery's "
            "original DNs, or let tools/predict.py --match-radiometry map each scene onto the "
            "training range, or train on imagery like it")
