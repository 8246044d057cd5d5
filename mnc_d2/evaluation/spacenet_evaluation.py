"""``SpaceNetEvaluator``: the SpaceNet building metric inside Detectron2's evaluation hooks.

For each image, ``process`` turns every predicted instance mask whose score passes the lowest
of ``TEST.SPACENET.SCORE_THRESH`` and ``TEST.SPACENET.SWEEP_THRESHOLDS`` into one pixel polygon
(the largest connected part; simplified and optionally regularised) with the instance score as
its confidence. Masks arrive binarised by the model (MODEL.MNC.MASK_THRESHOLD for MNC, 0.5 for
Detectron2's heads). There is no cap on the number of detections beyond the model's own. As in
``tools/predict.py``, a polygon with more than half its area on pixels outside the image's data
(a nodata value, an internal mask or an alpha band: GDAL's dataset mask of the file, or of the
window a dict names) is dropped (:mod:`mnc_d2.geometry.on_data`), so that the scores and the
best threshold written for prediction judge what prediction writes.

``evaluate`` gathers the polygons of all processes, scores them against the ground truth of the
same images with :mod:`.spacenet_metric` (rules in its docstring) at ``SCORE_THRESH`` (the
headline numbers), sweeps the score threshold over ``SWEEP_THRESHOLDS`` and measures the scores'
calibration (:mod:`.calibration`, from the same single scoring), writes
``spacenet_proposals.csv`` (proposals at SCORE_THRESH), ``spacenet_per_image.csv`` and
``spacenet_sweep.json`` to the output folder, writes the best threshold to ``threshold_file``
(a training run's ``OUTPUT_DIR/score_threshold.json``, which ``tools/predict.py`` then uses)
and returns::

    {"spacenet": {"F1", "precision", "recall", "TP", "FP", "FN", "score", "mean_<group>_F1",
                  "<group>/F1", "<group>/precision", "<group>/recall", ...,
                  "best_threshold", "best_threshold/score", "best_threshold/F1", "ECE",
                  "shape/<key>" for polygon_metrics.SUMMARY_KEYS}}

The ``shape/`` keys judge the polygons of the matched pairs (:mod:`.polygon_metrics`: mean IoU,
C-IoU, N-ratio, PoLiS, max tangent angle error, corner-count error, boundary F-score at 1 m, hole
recall), in metres through the registration's ``gsd_m``; per group in ``spacenet_shape.json``.

Groups follow the dataset's release (``TEST.SPACENET.GROUP_BY: auto`` reads the ``group_by``
its registration recorded, :mod:`mnc_d2.data.versions`; without one, SpaceNet 4 ImageIds are
grouped by nadir segment and others by city): cities for SpaceNet 1 and 2
(``mean_city_F1``), the Nadir / Off-Nadir / Very-Off-Nadir segments for SpaceNet 4
(``mean_nadir_F1``). ``score`` is the release's headline number, the mean of the group F1s; the
best threshold maximises it and so does the best checkpoint (:mod:`mnc_d2.engine.trainer`).

Ground truth comes from the dataset dicts: each annotation's exact pixel polygon
(``wkt_pix``, written by :mod:`mnc_d2.data`), else its polygon ``segmentation``, else its RLE
traced back to polygons.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import pycocotools.mask as mask_util
import shapely
from detectron2.config import configurable
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from shapely.geometry import Polygon

from ..utils.atomic import atomic_write
from .calibration import best_threshold, reliability, threshold_sweep
from ..geometry.polygons import mask_to_polygons
from ..geometry.instances import instances_to_polygons
from ..geometry.on_data import inside_data
from .polygon_metrics import SUMMARY_KEYS, matched_pair_metrics, summarize
from .spacenet_metric import score
from ..formats.spacenet_csv import write_proposal_csv
from ..inference.threshold import THRESHOLD_FILE, passes_setting

logger = logging.getLogger(__name__)
# score_threshold.json's "source" when no threshold matched any building (else "sweep")
NO_MATCH_SOURCE = "configured: no threshold matched any building"


def annotation_polygon(ann: dict):
    """The exact pixel geometry of one dataset annotation (see module docstring)."""
    if ann.get("wkt_pix"):
        return shapely.from_wkt(ann["wkt_pix"])
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        parts = [Polygon(np.asarray(p, dtype=float).reshape(-1, 2)) for p in seg if len(p) >= 6]
        return shapely.make_valid(shapely.union_all(parts)) if parts else Polygon()
    if isinstance(seg, dict):
        rle = seg if not isinstance(seg.get("counts"), list) else mask_util.frPyObjects(
            seg, *seg["size"])
        polys = mask_to_polygons(mask_util.decode(rle).astype(bool))
        return shapely.union_all(polys) if polys else Polygon()
    raise ValueError(f"annotation has neither 'wkt_pix' nor a 'segmentation': keys {list(ann)}")


def truth_frame(dataset_dicts: list[dict], image_ids: set[str] | None = None) -> pd.DataFrame:
    """Truth table (ImageId, BuildingId, geometry) from Detectron2 dataset dicts.

    Images without annotations get a ``POLYGON EMPTY`` row so they are scored.
    """
    rows = []
    for record in dataset_dicts:
        image_id = str(record["image_id"])
        if image_ids is not None and image_id not in image_ids:
            continue
        anns = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
        if not anns:
            rows.append((image_id, -1, Polygon()))
        rows.extend((image_id, i, annotation_polygon(a)) for i, a in enumerate(anns))
    return pd.DataFrame(rows, columns=["ImageId", "BuildingId", "geometry"])


def _proposal_frame(predictions: dict[str, list[tuple[Polygon, float]]]) -> pd.DataFrame:
    """(ImageId, BuildingId, Confidence, geometry) rows; a MultiPolygon becomes one row per part
    (as the CSV writer writes it, since the SpaceNet tester reads one polygon per row)."""
    rows = [(image_id, i, conf, part) for image_id, items in predictions.items()
            for i, (geom, conf) in enumerate(items) for part in shapely.get_parts(geom)]
    return pd.DataFrame(rows, columns=["ImageId", "BuildingId", "Confidence", "geometry"])


def records_threshold(cfg, dataset_name: str) -> bool:
    """Whether the evaluation of ``dataset_name`` writes the run's score threshold: with several
    DATASETS.TEST only the first's does, the set the best checkpoint follows
    (:func:`mnc_d2.engine.trainer.best_metric`); each would otherwise overwrite the one before,
    leaving prediction the last set's threshold with the first set's checkpoint."""
    tests = list(cfg.DATASETS.TEST)
    if len(tests) > 1 and dataset_name in tests and dataset_name != tests[0]:
        logger.info("%s: its best score threshold is in its spacenet_sweep.json; the run's %s "
                    "is the first test set's (%s), as the best checkpoint is", dataset_name,
                    THRESHOLD_FILE, tests[0])
        return False
    return True


def on_data(record: dict, found: list[tuple[Polygon, float]]) -> list[tuple[Polygon, float]]:
    """The (pixel polygon, score) pairs ``found`` on image ``record`` (a dataset dict: its
    ``file_name`` and ``window``, its ``height`` x ``width`` pixels) that lie on its data by
    :func:`mnc_d2.geometry.on_data.inside_data`; all of them for a file without a mask."""
    import rasterio
    from rasterio.windows import Window

    from ..data.bands import has_data_mask

    if not record.get("file_name"):  # nothing to read the mask from
        return found
    window = record.get("window")
    with rasterio.open(record["file_name"]) as src:
        if not has_data_mask(src):
            return found
        valid = src.dataset_mask(window=Window(*window) if window else None) > 0
    if valid.all():
        return found
    shape = (record.get("height", valid.shape[0]), record.get("width", valid.shape[1]))
    if valid.shape != tuple(shape):  # outputs come at the dict's size: the mask would not fit
        logger.warning("%s: its mask is %d x %d px but dataset dict %r says %d x %d; its "
                       "detections are scored without the nodata rule (a dict's height and "
                       "width are its file's, or its window's)", record["file_name"],
                       valid.shape[1], valid.shape[0], record.get("image_id"), shape[1],
                       shape[0])
        return found
    gaps = np.asarray(mask_to_polygons(~valid), dtype=object)
    keep = inside_data([polygon for polygon, _ in found], [gaps])
    return [pair for pair, k in zip(found, keep) if k]


class SpaceNetEvaluator(DatasetEvaluator):
    """SpaceNet F1 of predicted instance masks (see the module docstring)."""

    @configurable
    def __init__(self, dataset_name: str, *, output_dir: str | None = None,
                 score_thresh: float = 0.5, sweep_thresholds: tuple[float, ...] = (),
                 simplify_tolerance: float = 1.5, regularize: bool = False,
                 regularize_min_edge: float = 0.0, align_neighbours: float = 0.0,
                 align_gap: float = 10.0, rules: str = "spacenet", group_by: str = "auto",
                 threshold_file: str | None = None, passes: str = "one pass",
                 distributed: bool = True):
        self._dataset_name = dataset_name
        self._output_dir = Path(output_dir) if output_dir else None
        self._score_thresh = score_thresh
        self._sweep = sorted(float(t) for t in sweep_thresholds)
        self._floor = min([score_thresh, *self._sweep])
        self._simplify = simplify_tolerance
        self._regularize = regularize
        self._min_edge = regularize_min_edge
        self._align = (align_neighbours, align_gap)
        self._rules = rules
        self._group_by = group_by
        self._threshold_file = Path(threshold_file) if threshold_file else None
        self._passes = passes
        self._distributed = distributed
        # ImageId -> [(pixel Polygon, score)]; shapely geometries pickle, so the process gather
        # carries them as they are (no WKT round trip).
        self._predictions: dict[str, list[tuple[Polygon, float]]] = OrderedDict()

    @classmethod
    def from_config(cls, cfg, dataset_name: str, output_dir: str | None = None,
                    threshold_name: str = THRESHOLD_FILE):
        """``threshold_name``: the file in OUTPUT_DIR the best threshold goes to (--eval-only of
        a checkpoint other than the run's final one: that checkpoint's own file)."""
        sn = cfg.TEST.SPACENET
        return {"dataset_name": dataset_name, "output_dir": output_dir,
                "score_thresh": sn.SCORE_THRESH, "sweep_thresholds": tuple(sn.SWEEP_THRESHOLDS),
                "simplify_tolerance": sn.SIMPLIFY_TOLERANCE, "regularize": sn.REGULARIZE,
                "regularize_min_edge": sn.REGULARIZE_MIN_EDGE,
                "align_neighbours": sn.ALIGN_NEIGHBOURS, "align_gap": sn.ALIGN_NEIGHBOURS_GAP,
                "rules": sn.RULES, "group_by": sn.GROUP_BY,
                "threshold_file": str(Path(cfg.OUTPUT_DIR) / threshold_name)
                if cfg.OUTPUT_DIR and sn.SWEEP_THRESHOLDS and
                records_threshold(cfg, dataset_name) else None,
                "passes": passes_setting(cfg)}

    def reset(self):
        self._predictions = OrderedDict()

    def group_by(self) -> str:
        """The grouping used: the configured one, or for ``auto`` the one the dataset's
        registration recorded (its release's), else ``auto`` (decided from the ImageIds)."""
        if self._group_by != "auto":
            return self._group_by
        return MetadataCatalog.get(self._dataset_name).get("group_by", "auto")

    def instances_to_polygons(self, instances) -> list[tuple[Polygon, float]]:
        """``Instances`` with ``pred_masks`` (R, H, W) and ``scores`` (R,) -> [(Polygon, score)]
        for every instance at or above the lowest threshold evaluated."""
        # neighbours are aligned among the detections the headline threshold keeps
        return instances_to_polygons(instances, self._floor, self._simplify, self._regularize,
                                     self._min_edge, *self._align,
                                     align_min_score=self._score_thresh)

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            instances = out["instances"].to("cpu")
            found = self.instances_to_polygons(instances)
            self._predictions[str(inp["image_id"])] = on_data(inp, found) if found else found

    def evaluate(self):
        predictions = self._predictions
        if self._distributed and comm.get_world_size() > 1:
            comm.synchronize()
            gathered = comm.gather(predictions, dst=0)
            if not comm.is_main_process():
                return {}
            predictions = OrderedDict()
            for part in gathered:
                predictions.update(part)
        if not predictions:
            logger.warning("SpaceNetEvaluator received no predictions")
            return {}
        truth = truth_frame(DatasetCatalog.get(self._dataset_name), set(predictions))
        proposals = _proposal_frame(predictions)
        headline = proposals[proposals.Confidence >= self._score_thresh].reset_index(drop=True)
        group_by = self.group_by()
        result = score(truth, headline, rules=self._rules, group_by=group_by)
        summary = self._summary(result)
        shapes = self._shape_metrics(result, truth, headline)
        summary.update({f"shape/{k}": v for k, v in shapes["all"].items()
                        if k in SUMMARY_KEYS and v is not None})
        meta = MetadataCatalog.get(self._dataset_name)
        if meta.get("headline", None) and result.group_by == meta.get("group_by", None):
            logger.info("%s: score = %s", self._dataset_name, meta.headline)
        sweep = None
        if self._sweep:
            floor = score(truth, proposals, rules=self._rules, group_by=group_by)
            sweep = self._sweep_and_calibration(floor, proposals, truth, summary)
        if self._output_dir is not None:
            self._write(list(predictions), headline, result, sweep)
            with atomic_write(self._output_dir / "spacenet_shape.json", "w") as f:
                json.dump(shapes, f, indent=2)
        return {"spacenet": summary}

    def _sweep_and_calibration(self, floor, proposals, truth, summary) -> dict:
        table = threshold_sweep(floor, proposals, truth, self._sweep)
        best = best_threshold(table)
        kept = floor.proposal_kept
        calib = reliability(proposals.Confidence.to_numpy()[kept],
                            (floor.proposal_match >= 0)[kept])
        summary["best_threshold"] = best["threshold"]
        summary["best_threshold/score"] = best["score"]
        summary["best_threshold/F1"] = best["F1"]
        summary["ECE"] = calib["ECE"]
        logger.info("SpaceNet score sweep: best threshold %.2f (score %.4f; %.4f at the "
                    "configured %.2f); score calibration ECE %.3f", best["threshold"],
                    best["score"], summary["score"], self._score_thresh, calib["ECE"])
        sweep = {"dataset": self._dataset_name, "rules": self._rules,
                 "configured_threshold": self._score_thresh, "best": best,
                 "sweep": table.to_dict(orient="records"), "calibration": calib}
        if self._threshold_file is not None:
            chosen, source = best["threshold"], "sweep"
            if best["score"] <= 0:
                # every threshold scores 0 (nothing matched: an untrained or broken model): the
                # sweep's "best" would be its lowest threshold, and prediction would use it
                chosen, source = self._score_thresh, NO_MATCH_SOURCE
                logger.warning("no score threshold finds any building of %s (score 0 at every "
                               "threshold): the configured TEST.SPACENET.SCORE_THRESH (%.2f) "
                               "is recorded for prediction, not the sweep's lowest",
                               self._dataset_name, chosen)
            with atomic_write(self._threshold_file, "w") as f:
                json.dump({"score_thresh": chosen, "dataset": self._dataset_name,
                           "score": best["score"], "group_by": floor.group_by,
                           "passes": self._passes, "source": source}, f, indent=2)
            logger.info("best score threshold written to %s", self._threshold_file)
        return sweep

    def _write(self, image_ids, proposals, result, sweep) -> None:
        polys = {image: [] for image in image_ids}
        for row in proposals.itertuples():
            polys.setdefault(row.ImageId, []).append((row.geometry, row.Confidence))
        write_proposal_csv(self._output_dir / "spacenet_proposals.csv", polys)
        with atomic_write(self._output_dir / "spacenet_per_image.csv", "w", newline="") as f:
            result.per_image.to_csv(f, index=False)
        if sweep is not None:
            with atomic_write(self._output_dir / "spacenet_sweep.json", "w") as f:
                json.dump(sweep, f, indent=2)

    def _shape_metrics(self, result, truth, proposals) -> dict:
        """Polygon shape metrics of the matched pairs, per group and overall (metres: the
        registration's ground sample distance; pixels when it records none)."""
        gsd = MetadataCatalog.get(self._dataset_name).get("gsd_m", None)
        frame, groups = matched_pair_metrics(result, truth, proposals,
                                             metres_per_unit=gsd or 1.0)
        shapes = summarize(frame, groups)
        shapes["units"] = "metres" if gsd else "pixels (no gsd_m in the dataset's metadata)"
        a = shapes["all"]
        if a["pairs"]:
            logger.info("SpaceNet matched pairs' shape: mean IoU %.3f, C-IoU %.3f, N-ratio %.2f, "
                        "PoLiS %.2f %s, max tangent angle error %.1f deg, boundary F %.3f",
                        a["iou"], a["ciou"], a["n_ratio"], a["polis"], "m" if gsd else "px",
                        a["mta"], a["boundary_f"])
        return shapes

    @staticmethod
    def _summary(result) -> dict:
        o = result.overall
        out = OrderedDict(F1=o.f1, precision=o.precision, recall=o.recall, TP=o.tp, FP=o.fp,
                          FN=o.fn, score=result.mean_city_f1)
        if result.group_by != "none":
            out[f"mean_{result.group_by}_F1"] = result.mean_city_f1
        for group, c in sorted(result.cities.items()):
            out[f"{group}/F1"], out[f"{group}/precision"] = c.f1, c.precision
            out[f"{group}/recall"] = c.recall
        logger.info("SpaceNet (%s rules): F1 %.4f, precision %.4f, recall %.4f, score (mean %s "
                    "F1) %.4f", result.rules, o.f1, o.precision, o.recall, result.group_by,
                    result.mean_city_f1)
        return out
