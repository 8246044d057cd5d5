"""Per-band normalisation statistics computed from the training split and saved with the run.

``INPUT.BAND_STATS: "auto"`` makes :func:`resolve_band_stats` compute the mean and standard
deviation of every selected band (of its values after ``INPUT.DN_TRANSFORM``) over (a
deterministic sample of) the training images, write them to ``OUTPUT_DIR/band_stats.json`` and
put them in ``MODEL.PIXEL_MEAN/STD`` (the std divided by ``INPUT.BAND_STATS_TARGET_STD``, the
spread a pretrained backbone expects). The run's saved ``config.yaml`` then carries them, so
evaluation and ``predict.py`` normalise exactly as training did. A path instead of "auto" loads
such a JSON.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from detectron2.data import DatasetCatalog
from detectron2.utils import comm

from ..utils.atomic import atomic_write
from .bands import check_band_count, dataset_image, image_source
from .radiometry import DNTransform, dn_transform

logger = logging.getLogger(__name__)


def compute_band_stats(file_names: list, bands: list[int], max_images: int = 200,
                       transform: DNTransform | None = None) -> dict:
    """Mean/std per band over up to ``max_images`` images (every k-th, deterministic): each a
    file, or (file, (column, row, width, height)) for a window of a scene (own scenes,
    DATASETS.GEO: a window at a time, never a whole scene in memory).

    ``bands``: the 1-based file bands the model reads (:func:`.bands.input_bands`; the caller
    resolves an empty INPUT.BANDS first). Nodata pixels (the file's nodata value) are excluded.
    ``transform``: INPUT.DN_TRANSFORM, applied to the DNs first (None: none).
    Returns {"bands", "dn_transform", "mean", "std", "num_images"}: numbers and one string
    (checkpoints load them under torch's weights_only default).
    """
    if not file_names:
        raise ValueError("no training images to compute band statistics from")
    bands = [int(b) for b in bands]
    transform = transform or dn_transform("")
    step = max(1, len(file_names) // max_images) if max_images else 1
    chosen = sorted(file_names, key=str)[::step][: max_images or None]
    total = sq = count = None
    for item in chosen:
        path, window = image_source(item)
        with rasterio.open(path) as src:
            check_band_count(src, bands)  # the band reader's check: names the file
            # (C, H, W), pixels outside the data (nodata, mask or alpha band) masked
            data = src.read(bands, window=window, masked=True).astype(np.float64)
        data = np.ma.masked_invalid(data)  # and NaN, declared as nodata or not
        data = transform.forward(data)
        flat = data.reshape(data.shape[0], -1)
        if total is None:
            total, sq, count = (np.zeros(flat.shape[0]) for _ in range(3))
        total += flat.sum(axis=1).filled(0)
        sq += (flat ** 2).sum(axis=1).filled(0)
        count += flat.count(axis=1)
    count = np.maximum(count, 1)
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean ** 2, 1e-12))
    return {"bands": bands, "dn_transform": transform.kind, "mean": [float(m) for m in mean],
            "std": [float(max(s, 1e-3)) for s in std], "num_images": len(chosen)}


def resolve_band_stats(cfg) -> dict | None:
    """Apply INPUT.BAND_STATS to a (not yet frozen) cfg; returns the stats used, or None."""
    mode = cfg.INPUT.BAND_STATS
    if not mode:
        return None
    if mode == "auto":
        # each image once: a file, or a window of a scene (own scenes)
        files = sorted({dataset_image(d) for name in cfg.DATASETS.TRAIN
                        for d in DatasetCatalog.get(name)}, key=str)
        if not cfg.INPUT.BANDS and files:
            # Empty INPUT.BANDS with statistics from the data: every band of the training files
            # but an alpha band (it marks where the data is, it is not imagery), written into
            # the config so that evaluation and prediction read the same bands.
            with rasterio.open(image_source(files[0])[0]) as src:
                cfg.INPUT.BANDS = [b for b, kind in enumerate(src.colorinterp, start=1)
                                   if kind != ColorInterp.alpha]
                left = src.count - len(cfg.INPUT.BANDS)
            logger.info("INPUT.BANDS was empty: using %d bands of the training files%s",
                        len(cfg.INPUT.BANDS), " (their alpha band left out)" if left else "")
        stats = compute_band_stats(files, list(cfg.INPUT.BANDS), cfg.INPUT.BAND_STATS_MAX_IMAGES,
                                   dn_transform(cfg.INPUT.DN_TRANSFORM))
        out = Path(cfg.OUTPUT_DIR) / "band_stats.json"
        if comm.is_main_process():  # every process computes the same numbers; one writes
            with atomic_write(out, "w") as f:
                json.dump(stats, f, indent=2)
            logger.info("band statistics from %d training images written to %s",
                        stats["num_images"], out)
    else:
        path = Path(mode)
        if not path.is_file():
            raise FileNotFoundError(f"INPUT.BAND_STATS={mode!r}: no such file; use 'auto' or "
                                    "the band_stats.json of a previous run")
        stats = json.loads(path.read_text())
        if not cfg.INPUT.BANDS and stats["bands"]:
            cfg.INPUT.BANDS = [int(b) for b in stats["bands"]]
        if [int(b) for b in stats["bands"]] != [int(b) for b in cfg.INPUT.BANDS]:
            raise ValueError(f"{path} holds statistics of bands {stats['bands']} but "
                             f"INPUT.BANDS is {list(cfg.INPUT.BANDS)} (INPUT.BANDS names the "
                             "bands the model is trained on; to read the same inputs from "
                             "other band numbers of the scenes at prediction, keep it and "
                             "pass tools/predict.py --scene-bands)")
        kind = stats.get("dn_transform", "")  # files of mnc_d2 0.2.0 and before: DNs as read
        if kind != dn_transform(cfg.INPUT.DN_TRANSFORM).kind:
            raise ValueError(f"{path} holds statistics of DNs with INPUT.DN_TRANSFORM={kind!r} "
                             f"but the config sets {cfg.INPUT.DN_TRANSFORM!r}; set the same "
                             "transform or compute the statistics again (INPUT.BAND_STATS auto)")
    target = float(cfg.INPUT.BAND_STATS_TARGET_STD)
    if target <= 0:
        raise ValueError(f"INPUT.BAND_STATS_TARGET_STD={target} must be > 0 (1.0 = unit std)")
    cfg.MODEL.PIXEL_MEAN = stats["mean"]
    cfg.MODEL.PIXEL_STD = [s / target for s in stats["std"]]
    return stats
