"""One band reader: which file bands the model reads, and reading them (nodata filled).

Training (the dataset mapper), band statistics and prediction (whole scenes, window by window)
all go through :func:`input_bands` and :func:`read_bands`, so a file trains and predicts the
same way. Rule: ``INPUT.BANDS`` when given; otherwise bands ``1..len(MODEL.PIXEL_MEAN)``
(``INPUT.BAND_STATS: auto`` with empty ``INPUT.BANDS`` first fixes ``INPUT.BANDS`` to every band
of the training files and records it in the run's config.yaml).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def input_bands(cfg) -> list[int]:
    """The 1-based file bands the model reads (INPUT.BANDS, or 1..len(MODEL.PIXEL_MEAN))."""
    return [int(b) for b in cfg.INPUT.BANDS] or list(range(1, len(cfg.MODEL.PIXEL_MEAN) + 1))


def has_data_mask(src) -> bool:
    """Whether some pixels of open dataset ``src`` may lie outside its data: GDAL's dataset
    mask is anything but all-valid (a nodata value, an internal mask or an alpha band)."""
    from rasterio.enums import MaskFlags

    return any(MaskFlags.all_valid not in flags for flags in src.mask_flag_enums)


def mask_beyond_nodata(src) -> bool:
    """Whether open dataset ``src`` marks pixels outside its data by more than a nodata value:
    an internal (or .msk) mask or an alpha band, which only GDAL's dataset mask reveals (the
    pixels' values may be anything there)."""
    from rasterio.enums import MaskFlags

    return any(MaskFlags.per_dataset in flags or MaskFlags.alpha in flags
               for flags in src.mask_flag_enums)


def dataset_image(record: dict):
    """The image of a Detectron2 dataset dict: its file, or (file, (column, row, width,
    height)) when it is a window of a scene (own scenes, DATASETS.GEO), so that code reading
    the training images reads each window, not the scene's corner once per window."""
    window = record.get("window")
    return (record["file_name"], tuple(window)) if window else record["file_name"]


def image_source(image) -> tuple:
    """(file, rasterio Window or None) of a :func:`dataset_image` value."""
    from rasterio.windows import Window

    if isinstance(image, tuple):
        return image[0], Window(*image[1])
    return image, None


def read_bands(source, bands: list[int], fill: list[float] | None = None,
               window=None, with_valid: bool = False):
    """(H, W, C) float32 of the 1-based ``bands`` of a GeoTIFF (a path or an open rasterio
    dataset), optionally one ``window``; pixels outside the data get ``fill`` (one value per
    band, e.g. MODEL.PIXEL_MEAN, so they normalise to 0): a band's pixels equal to the file's
    nodata value, NaN pixels, and pixels outside an internal mask or an alpha band (whatever
    their values: an 8-bit JPEG COG's collar is rarely exactly 0). Training, band statistics,
    int8 calibration and prediction thus see a scene's collar alike.

    With ``with_valid``: ((H, W, C) image, (H, W) bool, True inside the data by GDAL's dataset
    mask; all True for a file without one).
    """
    if not isinstance(source, (str, Path)):  # an open dataset (a file, a WarpedVRT, ...)
        return _read(source, bands, fill, window, with_valid)
    # imported here: the model's checkpointer needs input_bands, not rasterio (a GPU machine
    # that only runs the model may lack the geospatial stack)
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(source) as src:
            return _read(src, bands, fill, window, with_valid)
    except RasterioIOError as exc:
        from ..inference.sources import REMOTE_READ_HINT, is_remote, redact

        fix = REMOTE_READ_HINT if is_remote(str(source)) else \
            "the file is truncated or corrupt; re-download or regenerate it"
        raise OSError(f"cannot read {redact(str(source))} ({redact(str(exc))}): {fix}") from None


# predict.py's remedy for a scene with fewer bands than the model reads
SCENE_BANDS_HINT = ("; if the model's channels are among its bands, name them in the model's "
                    "order with tools/predict.py --scene-bands (e.g. --scene-bands 1 1 1 gives "
                    "a panchromatic band to each channel of an RGB model)")


def check_band_count(src, bands: list[int], hint: str = "") -> None:
    """Raise, naming the file, when the open dataset ``src`` lacks one of ``bands`` (``hint``
    appended to the message)."""
    if not bands:
        raise ValueError("no bands to read: INPUT.BANDS and MODEL.PIXEL_MEAN are empty")
    if max(bands) > src.count:
        raise ValueError(f"the model reads bands {list(bands)} (INPUT.BANDS, or "
                         f"1..len(PIXEL_MEAN)) but {src.name} has {src.count} band(s){hint}")


def check_scene_bands(src, bands: list[int]) -> None:
    """Raise, naming the file and the option, when the open dataset ``src`` lacks one of the
    bands given with predict.py --scene-bands."""
    if max(bands) > src.count:
        raise ValueError(f"--scene-bands {' '.join(map(str, bands))}: {src.name} has "
                         f"{src.count} band(s)")


def _read(src, bands: list[int], fill, window, with_valid: bool = False):
    bands = [int(b) for b in bands]
    check_band_count(src, bands)
    data = src.read(bands, window=window).astype(np.float32)
    valid = None
    if with_valid or (fill is not None and mask_beyond_nodata(src)):
        valid = (src.dataset_mask(window=window) > 0 if has_data_mask(src)
                 else np.ones(data.shape[1:], dtype=bool))
    if fill is not None:
        # NaN is never a value (float imagery marks nodata with it, declared or not), and
        # NaN == NaN is false, so a NaN nodata needs its own test
        holes = np.isnan(data)
        if src.nodata is not None and not np.isnan(src.nodata):
            holes |= data == np.float32(src.nodata)
        if valid is not None:
            holes |= ~valid[None]
        if holes.any():
            data = np.where(holes, np.asarray(fill, np.float32)[:, None, None], data)
    image = np.ascontiguousarray(data.transpose(1, 2, 0))
    return (image, valid) if with_valid else image
