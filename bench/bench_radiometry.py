"""``tools/predict.py --match-radiometry``: what it recovers on imagery on another scale than the
training data, and what it costs on imagery like it.

A model trained on SpaceNet's 11-bit DNs finds almost nothing on an 8-bit export of the same
imagery (the radiometry check warns, but the scene ends ``ok``). The option maps each scene's
bands linearly onto the training imagery's mean and spread before the model normalises them.
This script runs the option through predict.py itself (the user's path), on the benchmark's
held-out tiles of both settings as they are and as 8-bit exports (each band of each tile
stretched from its 2nd to its 98th percentile onto 0-255, QGIS's default "cumulative count cut"
export), with and without the option, for each cached model seed of ``bench.bench_accuracy``.
Each prediction folder is scored as ``bench.bench_accuracy`` scores (SpaceNet rules, mean city
F1 at the configs' threshold, recall per slice, the best threshold of the sweep).

    python -m bench.bench_radiometry --setting hard --model-seeds 0 1 2 \\
        > bench/results/radiometry.json

Models: ``bench.bench_accuracy``'s cached runs (train them with it first). Nothing is trained.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import shapely

from bench.bench_accuracy import (SWEEP, _spread, benchmark_truth, cached_run, slice_flags,
                                  slice_recall)
from bench.bench_demo import cpu_model
from mnc_d2.evaluation.calibration import best_threshold, threshold_sweep
from mnc_d2.evaluation.spacenet_metric import score
from mnc_d2.inference.run import main as predict_main

logger = logging.getLogger("bench.radiometry")

INPUTS = ("as_is", "8bit")


def export_8bit(src: Path, dst: Path) -> None:
    """``src`` as an 8-bit export: each band stretched from its 2nd to its 98th percentile onto
    0-255 (rounded, clipped), georeferencing kept."""
    with rasterio.open(src) as s:
        data, profile = s.read().astype(np.float64), s.profile
    low = np.percentile(data, 2, axis=(1, 2))[:, None, None]
    high = np.percentile(data, 98, axis=(1, 2))[:, None, None]
    out = np.clip((data - low) / np.maximum(high - low, 1e-9) * 255, 0, 255).round()
    profile.update(dtype="uint8", nodata=None)
    with rasterio.open(dst, "w", **profile) as d:
        d.write(out.astype(np.uint8))


def inputs_of(test_root: Path, product: str, work: Path) -> dict[str, Path]:
    """Folders of the benchmark's tiles: as they are (links) and as 8-bit exports."""
    tiles = sorted((test_root / "spacenet").glob(f"AOI_*_Train/{product}/*.tif"))
    folders = {name: work / name for name in INPUTS}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for tile in tiles:
        link = folders["as_is"] / tile.name
        if not link.exists():
            link.symlink_to(tile.resolve())
        if not (folders["8bit"] / tile.name).exists():
            export_8bit(tile, folders["8bit"] / tile.name)
    return folders


def predict(config: Path, weights: Path, inputs: Path, out: Path, match: bool) -> None:
    """predict.py over a folder: every building down to the sweep's lowest threshold, as
    SpaceNet CSVs (the run's own pixel grid: the benchmark's tiles)."""
    argv = ["--config-file", str(config), "--input", str(inputs), "--output", str(out),
            "--formats", "parquet,csv", "--score-thresh", str(min(SWEEP)),
            *(["--match-radiometry"] if match else []), "MODEL.WEIGHTS", str(weights)]
    with contextlib.redirect_stderr(io.StringIO()):  # progress bars
        code = predict_main(argv)
    if code != 0:
        raise SystemExit(f"predict.py failed ({code}) on {inputs}: see {out}/manifest.parquet")


def score_folder(out: Path, truth: pd.DataFrame, attrs: pd.DataFrame, thresh: float) -> dict:
    """SpaceNet scores of a prediction folder's CSVs, as bench.bench_accuracy reports them."""
    csvs = sorted((out / "csv").glob("*.csv"))
    prop = pd.concat([pd.read_csv(p) for p in csvs], ignore_index=True)
    prop["geometry"] = shapely.from_wkt(prop["PolygonWKT_Pix"].to_numpy())
    floor = score(truth, prop)
    sweep = threshold_sweep(floor, prop, truth, SWEEP)
    result = score(truth, prop[prop.Confidence >= thresh].reset_index(drop=True))
    recall, counts = slice_recall(result, truth, attrs)
    out_json = result.to_json()
    out_json.update(score_thresh=thresh, recall_slices=recall, slice_counts=counts,
                    best_threshold=best_threshold(sweep))
    return out_json


def summarize(runs: dict) -> dict:
    """Mean, min and max over seeds of each (test setting, input, option) cell."""
    out = {}
    for key, by_seed in runs.items():
        reports = list(by_seed.values())
        cell = {"mean_city_f1": _spread([r["mean_city_f1"] for r in reports]),
                "best_threshold_score": _spread([r["best_threshold"]["score"]
                                                 for r in reports])}
        for flag in reports[0]["recall_slices"]:
            cell[f"recall_{flag}"] = _spread([r["recall_slices"][flag] for r in reports])
        out[key] = cell
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", default="hard", help="the models' training setting")
    parser.add_argument("--variant", default="mnc5")
    parser.add_argument("--model-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--test-settings", nargs="+", default=["default", "hard"])
    parser.add_argument("--work", type=Path, default=Path(".cache/bench/accuracy"))
    args = parser.parse_args()
    args.work = args.work.resolve()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("mnc_d2", "fvcore", "detectron2", "numexpr", "rasterio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    work = args.work / "radiometry"
    report = {"cpu": cpu_model(), "variant": args.variant, "setting": args.setting,
              "iterations": args.iters, "model_seeds": args.model_seeds,
              "inputs": {"as_is": "the benchmark's tiles", "8bit": "each band of each tile "
                         "stretched from its 2nd to its 98th percentile onto 0-255"},
              "runs": {}}
    for test_setting in args.test_settings:
        for seed in args.model_seeds:
            run_dir, cfg, test_root, product = cached_run(
                args.variant, seed, args.setting, args.work, args.iters, args.images,
                test_setting)
            config = work / f"{run_dir.parent.name}_seed{seed}.yaml"
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(cfg.dump())
            _, truth = benchmark_truth(test_root)
            attrs = slice_flags(test_root / "spacenet")
            folders = inputs_of(test_root, product, work / f"inputs_{test_root.name}")
            thresh = float(cfg.TEST.SPACENET.SCORE_THRESH)
            for name, folder in folders.items():
                for match in (False, True):
                    key = f"{test_setting}/{name}/{'matched' if match else 'plain'}"
                    out = work / "predictions" / f"{run_dir.parent.name}_seed{seed}" / \
                        key.replace("/", "_")
                    if not (out / "run.json").exists() or not (out / "csv").is_dir():
                        predict(config, run_dir / "model_final.pth", folder, out, match)
                    res = score_folder(out, truth, attrs, thresh)
                    report["runs"].setdefault(key, {})[str(seed)] = res
                    logger.info("%s seed %d: mean city F1 %.4f, dark %.3f", key, seed,
                                res["mean_city_f1"], res["recall_slices"].get("dark", np.nan))
    report["summary"] = summarize(report["runs"])
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
