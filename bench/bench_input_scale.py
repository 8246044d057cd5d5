#!/usr/bin/env python
"""Scenes smaller than a tile: predict.py's one input scale against Detectron2's per-image
resize.

Detectron2 resizes every test image to INPUT.MIN_SIZE_TEST. predict.py cuts a scene into
--tile-size tiles and, from this version on, resizes every tile by the factor a whole
INPUT.TRAIN_TILE_SIZE tile gets (416 / 650 for the benchmark's models); before, each tile went to
MIN_SIZE_TEST, so a scene smaller than a tile was enlarged past the training scale (a 325 px
scene 1.28 x 416 / 325 times more than a whole tile). For each trained run (a model seed) and
each synthetic scene (rendered as bench_seams.py renders them, from other scene seeds), the scene
is cut into abutting crops of each ``--crops`` side; each crop is predicted with the run's model
and threshold (predict.py's ScenePredictor, torch backend) twice: ``fixed`` (this version) and
``per_image`` (each crop resized to MIN_SIZE_TEST, as before), and scored against the crop's
truth (the footprints clipped to it, as SpaceNet's tiles clip them; SpaceNet rules, IoU 0.5),
counts summed over the crops. Prints one JSON object.

    python -m bench.bench_input_scale \\
        --runs .cache/bench/accuracy/runs/mnc5_60img_600it/seed{0,1,2} --setting default \\
        > bench/results/input_scale_default.json
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import shapely
from rasterio.windows import Window

from bench.bench_seams import (STYLE_NAMES, _abutting, counts, render, scene_parser,
                               seeded_runs)

MODES = ("fixed", "per_image")


def crops(scene: Path, folder: Path, side: int) -> list[tuple[Path, tuple[int, int]]]:
    """The scene cut into abutting ``side`` px crops: (path, (column, row) of the origin)."""
    out = []
    with rasterio.open(scene) as src:
        for y0, y1 in _abutting(src.height, side):
            for x0, x1 in _abutting(src.width, side):
                window = Window(x0, y0, x1 - x0, y1 - y0)
                path = folder / f"{scene.stem}_{side}_{x0}_{y0}.tif"
                profile = dict(src.profile, width=window.width, height=window.height,
                               transform=src.window_transform(window))
                with rasterio.open(path, "w", **profile) as dst:
                    dst.write(src.read(window=window))
                out.append((path, (x0, y0)))
    return out


def crop_truth(truth: list, origin: tuple[int, int], size: tuple[int, int]) -> list:
    """The footprints inside one crop, clipped to it, in its pixels."""
    x0, y0 = origin
    box = shapely.box(x0, y0, x0 + size[0], y0 + size[1])
    inside = shapely.intersection(np.asarray(truth, dtype=object), box)
    # one row per part, as bench_seams.render: the scorer's reader keeps a MultiPolygon's first
    parts = shapely.get_parts(inside)
    return [shapely.affinity.translate(g, -x0, -y0) for g in parts if g.area > 0]


def one_run(run: Path, seed: int, args, work: Path) -> list[dict]:
    from bench.bench_export import _cfg
    from mnc_d2.inference.eager import EagerModel
    from mnc_d2.inference.predictor import ScenePredictor, resolve_score_threshold

    cfg = _cfg(run)
    threshold = resolve_score_threshold(cfg, None)
    predictors = {"fixed": ScenePredictor(cfg, score_thresh=threshold)}
    per_image = ScenePredictor(cfg, score_thresh=threshold)
    per_image.model = EagerModel(cfg)  # no tile size: each image to MIN_SIZE_TEST, as before
    predictors["per_image"] = per_image
    rows = []
    for s, style in enumerate(STYLE_NAMES):
        for k in range(args.scenes_per_style):
            scene = work / f"{style}{k}.tif"
            truth = render(scene, style, args.setting, args.size, (7300, seed, s, k))
            for side in args.crops:
                total = {mode: np.zeros(3, dtype=int) for mode in MODES}
                pieces = crops(scene, work, side)
                for path, origin in pieces:
                    with rasterio.open(path) as src:
                        size = (src.width, src.height)
                    expected = crop_truth(truth, origin, size)
                    for mode, predictor in predictors.items():
                        found = predictor.predict(path, progress=False)
                        c = counts(np.asarray(expected, dtype=object),
                                   np.asarray(found.polygons, dtype=object),
                                   np.asarray(found.scores, dtype=float))
                        total[mode] += [c["tp"], c["fp"], c["fn"]]
                for mode in MODES:
                    tp, fp, fn = (int(v) for v in total[mode])
                    rows.append({"seed": seed, "scene": scene.stem, "crop_px": side,
                                 "crops": len(pieces), "mode": mode, "tp": tp, "fp": fp,
                                 "fn": fn, "f1": round(2 * tp / max(2 * tp + fp + fn, 1), 4)})
    return rows


def summary(rows: list[dict]) -> dict:
    """Per crop side and mode: each seed's F1 over its scenes' summed counts."""
    frame = pd.DataFrame(rows)
    out = {}
    for (side, mode), part in frame.groupby(["crop_px", "mode"], sort=True):
        f1 = []
        for _, g in part.groupby("seed"):
            tp, fp, fn = g.tp.sum(), g.fp.sum(), g.fn.sum()
            f1.append(round(float(2 * tp / max(2 * tp + fp + fn, 1)), 4))
        out[f"{side}/{mode}"] = f1
    return out


def main(argv=None) -> int:
    parser = scene_parser(__doc__.splitlines()[0], 1)
    parser.add_argument("--crops", type=int, nargs="+", default=[650, 433, 325, 217])
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    rows = []
    for seed, run in seeded_runs(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            rows += one_run(run, seed, args, Path(tmp))
        print(f"{run}: done", file=sys.stderr)
    report = {"setting": args.setting, "size_px": args.size, "styles": list(STYLE_NAMES),
              "scenes_per_style": args.scenes_per_style, "crops_px": args.crops,
              "runs": [str(r) for r in args.runs],
              "cpu": platform.processor() or platform.machine(), "summary": summary(rows),
              "rows": rows}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
