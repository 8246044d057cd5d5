"""TP/FP/FN overlays in the style of the SpaceNet visualizer.

TP proposals are outlined white, FP proposals yellow, FN truth polygons blue; every proposal is
labelled with its best IoU. Images are 8-bit renderings of the GeoTIFF (2-98 percentile stretch
per band).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
import rasterio
import shapely
from tqdm import tqdm

from ..utils.atomic import atomic_path
from .spacenet_metric import ScoreResult, read_proposal_csv, read_truth_csv, score, score_csv

logger = logging.getLogger(__name__)

WHITE, YELLOW, BLUE = (255, 255, 255), (255, 255, 0), (0, 0, 255)  # RGB


def stretch_limits(array: np.ndarray, low: float = 2, high: float = 98,
                   valid: np.ndarray | None = None) -> list[list[float]]:
    """Per band of a (C, H, W) raster, its ``low`` and ``high`` percentiles: the limits
    :func:`stretch_to_uint8` maps to 0 and 255. ``valid`` (H, W) bool, e.g. the GDAL dataset
    mask: the percentiles of those pixels only, so that a nodata collar (zeros or -9999 around
    an orthorectified scene) does not take a share of the stretch; all of them where none is
    valid."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != array.shape[1:]:
            raise ValueError(f"valid mask of shape {valid.shape} for a raster of "
                             f"{array.shape[1:]} pixels")
        if valid.any():
            array = array[:, valid]
    return [[float(v) for v in np.percentile(band, [low, high])] for band in array]


def stretch_to_uint8(array: np.ndarray, low: float = 2, high: float = 98,
                     limits: list | None = None, valid: np.ndarray | None = None) -> np.ndarray:
    """(C, H, W) raster of any dtype -> (H, W, 3) uint8 (percentile stretch per band).

    One band is repeated to grey; of more than three bands the first three are used (pass the
    RGB bands in that order). ``limits``: per band (lo, hi) to map to 0 and 255 instead of the
    raster's own percentiles (:func:`stretch_limits`), so that pieces of one image (tiles)
    share its stretch. ``valid``: the pixels the raster's own percentiles come from
    (:func:`stretch_limits`).
    """
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    bands = array[:3] if array.shape[0] >= 3 else np.repeat(array[:1], 3, axis=0)
    if limits is None:
        limits = stretch_limits(bands, low, high, valid)
    elif len(limits) < 3:
        limits = [limits[0]] * 3
    out = np.empty(bands.shape[1:] + (3,), dtype=np.uint8)
    for i, (band, (lo, hi)) in enumerate(zip(bands, limits)):
        scaled = (band - lo) / max(hi - lo, 1e-6)
        out[..., i] = np.clip(scaled * 255, 0, 255).astype(np.uint8)
    return out


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """(H, W, 3) uint8 RGB -> PNG at ``path``, atomically (parent folders created)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path} (cv2.imwrite failed)")
    return path


def read_display_image(path: str | Path, bands: Iterable[int] | None = None) -> np.ndarray:
    """Read a GeoTIFF for display: 1-based ``bands`` (default: the first three) -> (H, W, 3)."""
    with rasterio.open(path) as src:
        indexes = list(bands) if bands else list(range(1, min(src.count, 3) + 1))
        return stretch_to_uint8(src.read(indexes), valid=src.dataset_mask() > 0)


def draw_outline(image: np.ndarray, geom, color, thickness: int) -> None:
    """Draw every ring of ``geom`` (a Polygon or MultiPolygon in the pixel coordinates of
    ``image`` (H, W, 3) uint8, in place): outer rings and holes."""
    for part in shapely.get_parts(geom):
        if part.geom_type != "Polygon" or part.is_empty:
            continue
        for ring in [part.exterior, *part.interiors]:
            pts = np.round(np.asarray(ring.coords)[:, :2]).astype(np.int32)
            cv2.polylines(image, [pts], True, color, thickness, lineType=cv2.LINE_8)


def draw_image_overlay(image: np.ndarray, result: ScoreResult, truth_geoms: np.ndarray,
                       truth_rows: np.ndarray, prop_geoms: np.ndarray, prop_rows: np.ndarray,
                       thickness: int = 1) -> np.ndarray:
    """Draw one image's TP/FP/FN polygons (rows index the full tables of ``result``)."""
    canvas = image.copy()
    for t in truth_rows[result.truth_kept[truth_rows] & ~result.truth_matched[truth_rows]]:
        draw_outline(canvas, truth_geoms[t], BLUE, thickness)
    for p in prop_rows[result.proposal_kept[prop_rows]]:
        tp = result.proposal_match[p] >= 0
        draw_outline(canvas, prop_geoms[p], WHITE if tp else YELLOW, thickness)
        anchor = prop_geoms[p].representative_point()
        cv2.putText(canvas, f"{result.proposal_iou[p]:.2f}", (int(anchor.x), int(anchor.y)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.3, WHITE if tp else YELLOW, 1, cv2.LINE_AA)
    return canvas


def image_index(image_dir: str | Path) -> dict[str, Path]:
    """ImageId -> GeoTIFF for every ``*.tif`` under ``image_dir`` (one walk of the folder).
    SpaceNet names a tile ``<product>_<ImageId>.tif``, and ImageIds contain underscores, so a
    file is found by its whole stem and by every tail of it that follows an underscore; the
    first file in sorted order wins."""
    index: dict[str, Path] = {}
    for path in sorted(Path(image_dir).rglob("*.tif")):
        parts = path.stem.split("_")
        for k in range(len(parts)):
            index.setdefault("_".join(parts[k:]), path)
    return index


def find_image(image_dir: str | Path, image_id: str, index: dict | None = None) -> Path:
    """The GeoTIFF of ``image_id`` in ``image_dir`` (SpaceNet names: ``<product>_<ImageId>.tif``);
    ``index``: :func:`image_index` of the folder, when many images are looked up."""
    found = (index if index is not None else image_index(image_dir)).get(image_id)
    if found is None:
        raise FileNotFoundError(f"no GeoTIFF for ImageId {image_id!r} under {image_dir} "
                                f"(expected a file named like RGB-PanSharpen_{image_id}.tif)")
    return found


def visualize_csvs(truth_csv: str | Path, proposal_csv: str | Path, image_dir: str | Path,
                   out_dir: str | Path, image_ids: list[str] | None = None,
                   rules: str = "spacenet", bands: Iterable[int] | None = None
                   ) -> tuple[list[Path], dict[str, str]]:
    """Score the CSVs, then write ``<ImageId>_score.png`` overlays for the requested images.
    Returns (the PNGs written, ImageId -> why its overlay could not be drawn): an image without
    a readable GeoTIFF is logged and skipped, the others are drawn."""
    truth, props = read_truth_csv(truth_csv), read_proposal_csv(proposal_csv)
    # Scored from the files as the rule set's reference reads them; drawn from shapely's reading.
    result = score_csv(truth_csv, proposal_csv, rules=rules, full_iou=True,
                       warn_unknown=image_ids is None)  # a subset: other images are expected
    if len(result.proposal_match) != len(props) or len(result.truth_kept) != len(truth):
        result = score(truth, props, rules=rules, full_iou=True)  # rows differ (comment lines)
    t_geoms, p_geoms = truth["geometry"].to_numpy(), props["geometry"].to_numpy()
    t_ids, p_ids = truth["ImageId"].to_numpy(), props["ImageId"].to_numpy()
    wanted = image_ids or list(result.per_image["ImageId"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, failed = [], {}
    index = image_index(image_dir)
    for image_id in tqdm(wanted, desc="overlays", unit="img"):
        try:
            image = read_display_image(find_image(image_dir, image_id, index), bands)
        except (FileNotFoundError, OSError, ValueError) as exc:  # rasterio errors are OSErrors
            failed[image_id] = str(exc)
            logger.warning("%s: no overlay (%s)", image_id, exc)
            continue
        canvas = draw_image_overlay(image, result, t_geoms, np.flatnonzero(t_ids == image_id),
                                    p_geoms, np.flatnonzero(p_ids == image_id))
        written.append(write_png(out_dir / f"{image_id}_score.png", canvas))
    return written, failed
