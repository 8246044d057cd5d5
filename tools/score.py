#!/usr/bin/env python
"""Score a SpaceNet proposal CSV against truth CSV(s): the SpaceNet 2 tester's rules or solaris'.

    python tools/score.py --truth T.csv [T2.csv ...] --proposals P.csv
                          [--rules spacenet|solaris] [--group-by auto|city|nadir|none]
                          [--images DIR ...] [--per-image OUT.csv] [--json]
                          [--polygon-metrics [--gsd 0.3] [--boundary-tolerance 1.0]]
    python tools/score.py --truth labels.geojson|.parquet|.gpkg|T.csv ... --predictions OUT/
                          [--city city.parquet] [--scene-root DIR] [--group-by ...]
                          [--per-image OUT.csv] [--json] [--polygon-metrics]

The second form scores a tools/predict.py output folder (each scene an image, at the run's
threshold) against truth in map coordinates in any CRS or SpaceNet CSVs
(mnc_d2/evaluation/folder_scoring.py); polygon metrics then come in ground metres from the
scenes' CRS. Scenes of SpaceNet tiles scored against SpaceNet CSVs are grouped as their
release scores them (--group-by auto: mean city F1 for SpaceNet 2), any other folder as one
group. With --city, the folder's merged city (tools/merge_footprints.py) is scored as one
image against map truth inside the scenes, so a building found on both sides of a seam counts
once.

Torch-free: starts in a fraction of a second. ``--rules spacenet`` (default) gives the numbers of
the SpaceNet 2 offline tester v2.0 (the leaderboard scorer); see
mnc_d2/evaluation/spacenet_metric.py for both rule sets.
"""

import argparse
import json
import logging
import sys

from mnc_d2.evaluation.report import polygon_table, score_table
from mnc_d2.evaluation.spacenet_metric import (GROUP_BY, RULES, SpaceNetCSVError,
                                               image_folder_ids, score_csv)
from mnc_d2.utils.atomic import atomic_write
from mnc_d2.utils.logs import configure_cli_logging


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--truth", required=True, nargs="+",
                        help="truth CSV(s) (ImageId,BuildingId,PolygonWKT_Pix,PolygonWKT_Geo), "
                             "read in order like the tester's several -truth files; with "
                             "--predictions also map files in any CRS (GeoJSON, GeoParquet, "
                             "GeoPackage)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--proposals", help="proposal CSV (...,Confidence)")
    source.add_argument("--predictions", metavar="OUT_DIR",
                        help="a tools/predict.py output folder: its scenes' buildings at the "
                             "run's threshold, each scene an image")
    parser.add_argument("--city", metavar="CITY.parquet",
                        help="--predictions: score this merged city (tools/merge_footprints.py) "
                             "as one image instead of each scene (a building across a seam "
                             "counts once); map truth only")
    parser.add_argument("--scene-root", metavar="DIR",
                        help="--predictions: folder where the scenes are now, when the "
                             "manifest's paths moved (matched by file name)")
    parser.add_argument("--rules", choices=RULES, default="spacenet")
    parser.add_argument("--images", nargs="+", default=[], metavar="DIR",
                        help="image folder(s) whose PAN/*.tif also count as images (the "
                             "tester's -image-dir): their cities enter the mean city F1")
    parser.add_argument("--group-by", choices=GROUP_BY, default="auto",
                        help="groups whose F1s are averaged: city (SpaceNet 2), nadir (SpaceNet "
                             "4's Nadir / Off-Nadir / Very-Off-Nadir segments), none; auto picks "
                             "nadir for SpaceNet 4 ImageIds, else city (--predictions: only for "
                             "scenes named as SpaceNet tiles with truth CSVs, else none)")
    parser.add_argument("--iou-threshold", type=float, default=0.5)
    parser.add_argument("--per-image", metavar="OUT.csv", help="also write per-image rows here")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--polygon-metrics", action="store_true",
                        help="also judge the shape of the matched pairs: mean IoU, C-IoU, "
                             "N-ratio, PoLiS, max tangent angle error, corner-count error, "
                             "boundary F-score, hole recall (mnc_d2/evaluation/polygon_metrics.py)")
    parser.add_argument("--gsd", type=float, default=0.3,
                        help="metres per pixel of the CSVs' pixel coordinates (default 0.3: "
                             "SpaceNet 2's 650 px grid; SpaceNet 4's 900 px grid: 0.5)")
    parser.add_argument("--boundary-tolerance", type=float, default=1.0, metavar="METRES",
                        help="tolerance of the boundary F-score (default 1 m)")
    args = parser.parse_args(argv)
    configure_cli_logging(logging.WARNING, fmt="%(levelname)s %(message)s")
    if args.predictions:
        return _score_folder(args)
    if args.city:
        print("error: --city is scored with --predictions (the folder it was merged from)",
              file=sys.stderr)
        return 2
    try:
        images = [i for folder in args.images for i in image_folder_ids(folder)]
        result = score_csv(args.truth, args.proposals, rules=args.rules, images=images,
                           iou_threshold=args.iou_threshold, group_by=args.group_by)
        shapes = None
        if args.polygon_metrics:  # pandas-based; imported only when asked for
            from mnc_d2.evaluation.polygon_metrics import csv_shape_summary

            shapes = csv_shape_summary(args.truth, args.proposals, result, args.gsd,
                                       args.boundary_tolerance)
    except (SpaceNetCSVError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _report(args, result, shapes)


def _score_folder(args) -> int:
    from mnc_d2.evaluation.folder_scoring import FolderInputError, score_city, score_folder

    if args.images:
        print("error: --images is for --proposals; a prediction folder is scored with each "
              "scene an image", file=sys.stderr)
        return 2
    if args.city is not None and args.group_by not in ("auto", "none"):
        print(f"error: --group-by {args.group_by}: a merged city (--city) is scored as one "
              "image, one group", file=sys.stderr)
        return 2
    try:
        common = dict(rules=args.rules, iou_threshold=args.iou_threshold,
                      scene_root=args.scene_root, polygon_metrics=args.polygon_metrics,
                      tolerance=args.boundary_tolerance)
        if args.city is None:
            result, shapes = score_folder(args.predictions, args.truth, group_by=args.group_by,
                                          **common)
        else:
            result, shapes = score_city(args.predictions, args.city, args.truth, **common)
    except (FolderInputError, SpaceNetCSVError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _report(args, result, shapes)


def _report(args, result, shapes) -> int:
    if args.per_image:
        with atomic_write(args.per_image, "w", newline="") as handle:
            result.write_per_image_csv(handle)
    if args.json:
        print(json.dumps({**result.to_json(), **({"polygon_metrics": shapes} if shapes else {})},
                         indent=2))
    else:
        print(score_table(result) + ("\n\n" + polygon_table(shapes) if shapes else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
