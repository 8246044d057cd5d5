"""Building footprints for whole GeoTIFF scenes of any size (``tools/predict.py``).

The scene is read window by window (memory stays bounded by one batch of tiles plus the
polygons), tiles overlap and are batched through the model, predictions are merged across tile
borders (:mod:`.tiling`), and the result is written as GeoJSON in the source CRS, a SpaceNet
proposal CSV (pixel coordinates) and optionally a PNG overlay. Band selection and normalisation
are those of the training run (its config.yaml: INPUT.BANDS, MODEL.PIXEL_MEAN/STD).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import rasterio
import torch
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from rasterio.enums import Resampling
from shapely import affinity
from tqdm import tqdm

from ..data.versions import image_id_of
from ..data.bands import check_band_count, input_bands, read_bands
from ..modeling.checkpoint import build_checkpointer
from ..geometry.polygons import pixel_to_map
from ..evaluation.spacenet_evaluation import THRESHOLD_FILE
from ..modeling.postprocess import instances_to_polygons
from ..evaluation.visualize import stretch_to_uint8, write_png
from ..formats.geojson import write_geojson
from ..formats.spacenet_csv import write_proposal_csv
from .tiling import in_core, merge_across_tiles, tile_grid

logger = logging.getLogger(__name__)

MAX_OVERLAY_SIDE = 4096


@dataclass
class ScenePrediction:
    """Building polygons of one scene (pixel coordinates) with scores and georeferencing."""

    path: Path
    image_id: str
    polygons: list
    scores: list[float]
    crs: object
    transform: object
    width: int
    height: int


def resolve_score_threshold(cfg, override: float | None = None) -> float:
    """The score threshold for prediction: ``override`` when given; else the best threshold the
    training run's evaluation recorded next to the weights (``score_threshold.json``, written by
    SpaceNetEvaluator's sweep); else TEST.SPACENET.SCORE_THRESH."""
    if override is not None:
        logger.info("score threshold %.3f (given)", override)
        return float(override)
    recorded = Path(cfg.MODEL.WEIGHTS).parent / THRESHOLD_FILE
    if recorded.is_file():
        try:
            value = float(json.loads(recorded.read_text())["score_thresh"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{recorded}: unreadable score threshold ({exc}); delete the file "
                             "or pass --score-thresh") from exc
        logger.info("score threshold %.3f from %s (the training run's best on its validation "
                    "split; --score-thresh overrides)", value, recorded)
        return value
    logger.info("score threshold %.3f (TEST.SPACENET.SCORE_THRESH; no %s next to the weights)",
                cfg.TEST.SPACENET.SCORE_THRESH, THRESHOLD_FILE)
    return float(cfg.TEST.SPACENET.SCORE_THRESH)


class ScenePredictor:
    """Run a trained model over GeoTIFF scenes (see the module docstring)."""

    def __init__(self, cfg, tile_size: int = 650, overlap: int = 128, batch_size: int = 2,
                 score_thresh: float | None = None):
        if not cfg.MODEL.WEIGHTS:
            raise ValueError("MODEL.WEIGHTS is empty: pass the trained model, e.g. "
                             "MODEL.WEIGHTS output/run/model_final.pth")
        self.cfg = cfg
        self.model = build_model(cfg).eval()
        build_checkpointer(cfg, self.model).load(cfg.MODEL.WEIGHTS)
        self.bands = input_bands(cfg)
        self.fill = np.asarray(cfg.MODEL.PIXEL_MEAN, dtype=np.float32)
        self.resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        self.tile_size, self.overlap, self.batch_size = tile_size, overlap, batch_size
        sn = cfg.TEST.SPACENET
        self.post = {"score_thresh": resolve_score_threshold(cfg, score_thresh),
                     "simplify_tolerance": sn.SIMPLIFY_TOLERANCE, "regularize": sn.REGULARIZE,
                     "min_edge": sn.REGULARIZE_MIN_EDGE, "align_deg": sn.ALIGN_NEIGHBOURS,
                     "align_gap": sn.ALIGN_NEIGHBOURS_GAP}

    def _read(self, src, window) -> np.ndarray:
        return read_bands(src, self.bands, self.fill, window)

    @torch.no_grad()
    def _run(self, images: list[np.ndarray]) -> list:
        inputs = []
        for image in images:
            resized = self.resize.get_transform(image).apply_image(image)
            inputs.append({"image": torch.as_tensor(resized.transpose(2, 0, 1).copy()),
                           "height": image.shape[0], "width": image.shape[1]})
        return [out["instances"].to("cpu") for out in self.model(inputs)]

    def predict(self, path: str | Path, progress: bool = True) -> ScenePrediction:
        path = Path(path)
        with rasterio.open(path) as src:
            check_band_count(src, self.bands)
            tiles = tile_grid(src.width, src.height, self.tile_size, self.overlap)
            polygons, scores, tile_ids = [], [], []
            bar = tqdm(total=len(tiles), desc=path.name, unit="tile", disable=not progress)
            for start in range(0, len(tiles), self.batch_size):
                chunk = tiles[start: start + self.batch_size]
                outputs = self._run([self._read(src, t.window) for t in chunk])
                for k, (tile, instances) in enumerate(zip(chunk, outputs)):
                    found = instances_to_polygons(instances, **self.post)
                    shifted = [affinity.translate(p, tile.window.col_off, tile.window.row_off)
                               for p, _ in found]
                    for keep, poly, (_, score) in zip(in_core(shifted, tile.core), shifted, found):
                        if keep:
                            polygons.append(poly)
                            scores.append(score)
                            tile_ids.append(start + k)
                bar.update(len(chunk))
            bar.close()
            polygons, scores = merge_across_tiles(polygons, scores, tile_ids)
            image_id = image_id_of(path) or path.stem
            return ScenePrediction(path, image_id, polygons, scores, src.crs, src.transform,
                                   src.width, src.height)


def write_scene_formats(pred: ScenePrediction, paths: dict[str, Path], feature_id: dict,
                        rgb_bands: list[int] | None = None) -> list:
    """Write the formats ``paths`` names (``geojson``: map coordinates in the source CRS, each
    feature with ``feature_id``, building_id and score; ``csv``: SpaceNet proposals in pixels;
    ``png``: overlay), each atomically. Returns the polygons in map coordinates."""
    geo = [pixel_to_map(p, pred.transform) for p in pred.polygons]
    if "geojson" in paths:
        props = [{**feature_id, "building_id": i, "score": round(s, 4)}
                 for i, s in enumerate(pred.scores)]
        write_geojson(paths["geojson"], geo, pred.crs, props)
    if "csv" in paths:
        write_proposal_csv(paths["csv"], {pred.image_id: list(zip(pred.polygons, pred.scores))})
    if "png" in paths:
        _write_overlay(pred, Path(paths["png"]), rgb_bands)
    return geo


def _write_overlay(pred: ScenePrediction, path: Path, rgb_bands: list[int] | None) -> None:
    scale = min(1.0, MAX_OVERLAY_SIDE / max(pred.width, pred.height))
    h, w = max(1, int(pred.height * scale)), max(1, int(pred.width * scale))
    with rasterio.open(pred.path) as src:
        bands = rgb_bands or list(range(1, min(src.count, 3) + 1))
        image = stretch_to_uint8(src.read(bands, out_shape=(len(bands), h, w),
                                          resampling=Resampling.average))
    for poly in pred.polygons:
        pts = np.round(np.asarray(poly.exterior.coords) * scale).astype(np.int32)
        cv2.polylines(image, [pts], True, (255, 255, 0), 1, lineType=cv2.LINE_8)
    write_png(path, image)
