#!/usr/bin/env python
"""Mask -> polygon, measured: the same predicted masks polygonised several ways, scored.

For every trained run given (bench_accuracy.py's cached models), the model predicts each tile of
the held-out benchmark once; every instance mask at or above the config's score threshold is
then turned into a polygon by each method, timed (trace included), and each method's polygons
are scored: mean city F1 (SpaceNet 2 rules) and the shape metrics of the matched pairs
(mnc_d2.evaluation.polygon_metrics, metres at 0.3 m per pixel), overall and per slice.

Methods:

* ``traced``: the mask's outline as traced (rasterio.features.shapes), no simplification;
* ``simplified``: traced, then Douglas-Peucker at 0.5 px (``TEST.SPACENET.SIMPLIFY_TOLERANCE``'s
  default before mnc_d2 0.2);
* ``simplified_1px`` ... ``_3px``: the same at 1, 1.5 (the default since 0.2, chosen by this
  benchmark), 2 and 3 px;
* ``rectilinear``: simplified, then mnc_d2's rectilinear regularisation
  (``TEST.SPACENET.REGULARIZE``: edges snapped to the building's dominant orientation);
* ``rectilinear_min2px`` / ``_min4px``: the same, edges shorter than 2 / 4 px merged into their
  neighbours (``regularize_rectilinear(min_edge=...)``); ``rectilinear_1.5px_min2px``: from the
  1.5 px simplification;
* ``simplified_1.5px_aligned`` / ``rectilinear_1.5px_min2px_aligned``: those polygons with close
  (10 px), nearly parallel (10 degrees) neighbours of an image made parallel
  (``TEST.SPACENET.ALIGN_NEIGHBOURS``); each method also reports the mean orientation difference
  of such neighbour pairs (``angle_spread_deg``; the truth's own is reported beside it);
* ``buildingregulariser``: the traced outlines of an image through buildingregulariser 0.2.5
  (PyPI; edges aligned to the principal direction, 45 degrees allowed, its own simplification at
  1.5 px, no circles), one process. (At 0.5 px it leaves a mask's pixel staircase as it is: the
  staircase's edges are already at 0 and 90 degrees.)

Prints one JSON object: per method, per run and summarised over runs (mean ± std).

    python -m bench.bench_polygonize --setting default \\
        --runs .cache/bench/accuracy/runs/mnc5_60img_600it/seed{0,1,2}
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

import mnc_d2

mnc_d2.setup()

from detectron2.evaluation import DatasetEvaluator, inference_on_dataset  # noqa: E402

from mnc_d2.engine.setup import setup_cfg  # noqa: E402
from mnc_d2.engine.trainer import Trainer  # noqa: E402
from mnc_d2.evaluation.spacenet_metric import score  # noqa: E402
from mnc_d2.geometry.align import align_neighbours, neighbour_angle_spread  # noqa: E402
from mnc_d2.geometry.polygons import mask_to_polygon  # noqa: E402
from mnc_d2.modeling.checkpoint import build_checkpointer  # noqa: E402

from . import bench_accuracy as acc  # noqa: E402

# Methods run from the mask (tracing included in their time), with mask_to_polygon's arguments.
FROM_MASK = {
    "traced": {},
    "simplified": {"simplify_tolerance": 0.5},
    "simplified_1px": {"simplify_tolerance": 1.0},
    "simplified_1.5px": {"simplify_tolerance": 1.5},
    "simplified_2px": {"simplify_tolerance": 2.0},
    "simplified_3px": {"simplify_tolerance": 3.0},
    "rectilinear": {"simplify_tolerance": 0.5, "regularize": True},
    "rectilinear_min2px": {"simplify_tolerance": 0.5, "regularize": True, "min_edge": 2.0},
    "rectilinear_min4px": {"simplify_tolerance": 0.5, "regularize": True, "min_edge": 4.0},
    "rectilinear_1.5px_min2px": {"simplify_tolerance": 1.5, "regularize": True, "min_edge": 2.0},
}
# Neighbour alignment (mnc_d2.geometry.align, TEST.SPACENET.ALIGN_NEIGHBOURS 10 degrees,
# ALIGN_NEIGHBOURS_GAP 10 px) of a method's polygons, per image; its time includes the method's.
ALIGNED = {"simplified_1.5px_aligned": "simplified_1.5px",
           "rectilinear_1.5px_min2px_aligned": "rectilinear_1.5px_min2px"}
ALIGN_DEG, ALIGN_GAP = 10.0, 10.0
METHODS = (*FROM_MASK, *ALIGNED, "buildingregulariser")


def _library_regularize(polygons: list) -> list:
    """buildingregulariser on one image's polygons (pixel units); the largest piece of each
    building, None where the library dropped it."""
    import geopandas as gpd

    if not polygons:
        return []
    try:
        from buildingregulariser import regularize_geodataframe
    except ImportError:  # bench/requirements.txt not installed: the report says so
        return [None] * len(polygons)
    frame = gpd.GeoDataFrame({"bid": range(len(polygons))}, geometry=polygons)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = regularize_geodataframe(frame, parallel_threshold=1.0, simplify=True,
                                      simplify_tolerance=1.5, allow_circles=False, num_cores=1)
    out = out[out.geometry.notna() & ~out.geometry.is_empty]
    out = out.assign(area=out.geometry.area).sort_values("area").drop_duplicates("bid", keep="last")
    kept = dict(zip(out["bid"], out.geometry))
    return [kept.get(i) for i in range(len(polygons))]


class _Polygonize(DatasetEvaluator):
    """Polygonises every kept instance mask by every method, timing each."""

    def __init__(self, score_thresh: float):
        self.score_thresh = score_thresh
        self.rows = {m: [] for m in METHODS}  # (ImageId, BuildingId, Confidence, geometry)
        self.seconds = dict.fromkeys(METHODS, 0.0)
        self.seconds_of_image: dict[str, float] = {}
        self.buildings = 0

    def reset(self):
        pass

    def _timed(self, method: str, fn):
        start = time.perf_counter()
        out = fn()
        self.seconds_of_image[method] = time.perf_counter() - start
        self.seconds[method] += self.seconds_of_image[method]
        return out

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            inst = out["instances"].to("cpu")
            keep = inst.scores >= self.score_thresh
            masks, scores = inst.pred_masks[keep].numpy(), inst.scores[keep].numpy()
            self.buildings += len(masks)
            results = {method: self._timed(method, lambda kw=kw: [mask_to_polygon(m, **kw)
                                                                  for m in masks])
                       for method, kw in FROM_MASK.items()}
            for method, base in ALIGNED.items():
                start = time.perf_counter()
                kept = [p for p in results[base] if p is not None]
                aligned = iter(align_neighbours(kept, ALIGN_DEG, ALIGN_GAP))
                results[method] = [next(aligned) if p is not None else None
                                   for p in results[base]]
                self.seconds[method] += self.seconds_of_image[base] + time.perf_counter() - start
            # The library starts from traced outlines: its time includes tracing them again.
            start = time.perf_counter()
            outlines = [mask_to_polygon(m) for m in masks]
            regular = iter(_library_regularize([p for p in outlines if p is not None]))
            results["buildingregulariser"] = [next(regular) if p is not None else None
                                              for p in outlines]
            self.seconds["buildingregulariser"] += time.perf_counter() - start
            for method, polys in results.items():
                self.rows[method] += [(str(inp["image_id"]), i, float(s), p)
                                      for i, (p, s) in enumerate(zip(polys, scores))
                                      if p is not None]

    def evaluate(self):
        return {}


def run_one(run: Path, test_root: Path, attrs: pd.DataFrame,
            score_thresh: float | None = None) -> dict:
    opts = ["MODEL.WEIGHTS", str(run / "model_final.pth")]
    if score_thresh is not None:
        opts += ["TEST.SPACENET.SCORE_THRESH", str(score_thresh)]
    cfg = setup_cfg(str(run / "config.yaml"), opts, for_training=False)
    model = Trainer.build_model(cfg)
    build_checkpointer(cfg, model).load(cfg.MODEL.WEIGHTS)
    names, truth = acc.benchmark_datasets(test_root, "RGB-PanSharpen")
    collect = _Polygonize(cfg.TEST.SPACENET.SCORE_THRESH)
    for name in names:
        inference_on_dataset(model, Trainer.build_test_loader(cfg, name), collect)
    out = {"run": str(run), "buildings": collect.buildings}
    for method in METHODS:
        props = pd.DataFrame(collect.rows[method],
                             columns=["ImageId", "BuildingId", "Confidence", "geometry"])
        result = score(truth, props)
        out[method] = {"mean_city_f1": round(result.mean_city_f1, 4),
                       "ms_per_1000_buildings": round(
                           1e6 * collect.seconds[method] / max(collect.buildings, 1), 1),
                       "shape": acc.shape_by_slice(result, truth, props, attrs),
                       "angle_spread_deg": angle_spread(props)}
    out["truth_angle_spread_deg"] = angle_spread(truth)
    return out


def angle_spread(frame: pd.DataFrame) -> float | None:
    """Mean orientation difference (degrees) of close (ALIGN_GAP px), nearly parallel
    (ALIGN_DEG) pairs of polygons of one image, over every such pair of every image."""
    total, pairs = 0.0, 0
    for _, group in frame.groupby("ImageId"):
        polys = [g for g in group.geometry if g is not None and not g.is_empty]
        spread, n = neighbour_angle_spread(polys, ALIGN_GAP, ALIGN_DEG)
        if n:
            total, pairs = total + spread * n, pairs + n
    return round(total / pairs, 3) if pairs else None


def _spread(values: list) -> dict | None:
    """bench_accuracy's mean and spread of the values that exist (None when none does)."""
    values = [v for v in values if v is not None]
    return acc._spread(values) if values else None


def summarize(runs: list[dict]) -> dict:
    """Per method: mean and spread over runs of F1, time and the overall shape metrics, and the
    C-IoU of the concave and the small buildings' pairs."""
    out = {}
    for method in METHODS:
        entry = {"mean_city_f1": _spread([r[method]["mean_city_f1"] for r in runs]),
                 "ms_per_1000_buildings": _spread(
                     [r[method]["ms_per_1000_buildings"] for r in runs])}
        for key in acc.SHAPE_KEYS:
            entry[f"shape_{key}"] = _spread([r[method]["shape"]["all"][key] for r in runs])
        entry["angle_spread_deg"] = _spread([r[method].get("angle_spread_deg") for r in runs])
        for flag in ("concave", "small"):
            entry[f"shape_ciou_{flag}"] = _spread([r[method]["shape"][flag]["ciou"]
                                                   for r in runs])
        out[method] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="trained run folders")
    parser.add_argument("--setting", default="default", choices=["default", "hard"])
    parser.add_argument("--work", default=".cache/bench/accuracy")
    parser.add_argument("--test-seed", type=int, default=1)
    parser.add_argument("--test-images", type=int, default=30)
    parser.add_argument("--score-thresh", type=float,
                        help="detections kept (default: the config's TEST.SPACENET.SCORE_THRESH)")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    test_root = acc.prepare_data(acc.data_dir(Path(args.work).resolve(), "test", args.test_seed,
                                              args.test_images, args.setting),
                                 args.test_seed, args.test_images, args.setting)
    attrs = acc.slice_flags(test_root / "spacenet")
    runs = [run_one(Path(r).resolve(), test_root, attrs, args.score_thresh) for r in args.runs]
    import importlib.util

    library = ("buildingregulariser installed" if importlib.util.find_spec("buildingregulariser")
               else "buildingregulariser not installed (pip install -r bench/requirements.txt): "
                    "its method found no polygons")
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU",
                      "library": library,
                      "setting": args.setting, "methods": list(METHODS),
                      "score_thresh": args.score_thresh, "runs": runs,
                      "truth_angle_spread_deg": runs[0]["truth_angle_spread_deg"] if runs else None,
                      "summary": summarize(runs)}, indent=2))


if __name__ == "__main__":
    main()
