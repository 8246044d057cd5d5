#!/usr/bin/env python
"""Many scenes: tools/predict.py --engine local vs --engine ray --workers 2, side by side.

Writes --scenes synthetic 3-band GeoTIFF scenes (--size px square, generator seed 5, Vegas
style), then runs tools/predict.py over all of them in a child process per engine with a
trained run's config and weights, --rounds times, the two engines' order alternating from round
to round: wall time of the process, scenes per second, median seconds per scene (from the
manifest), peak RSS per worker process (the manifest's peak_rss_mb; for local the one process)
and the statuses. Ray's start-up cost is timed once in a fresh process. The two engines' outputs
of the first round are compared scene by scene: building counts, and the IoU of the union of
each scene's polygons (local runs the model on this machine's threads, each Ray actor on
--cpus-per-worker of them, so floating-point sums may differ in the last bits; with equal thread
counts predict.py's engines are bit-identical). With --backend other than torch, an exported
model (--model, tools/export_model.py's folder) runs instead of the training run, and the local
process gets as many threads as this machine has CPUs (--torch-threads; the runtime's own
default may count physical cores only). Prints one JSON object.

    python -m bench.bench_predict_many --run .cache/bench/accuracy/runs/mnc5_60img_600it/seed0
    python -m bench.bench_predict_many --backend onnxruntime-int8 --model exported/run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely

from .bench_demo import cpu_model

ROOT = Path(__file__).resolve().parents[1]


def write_scenes(folder: Path, count: int, size: int) -> list[Path]:
    from mnc_d2.synthetic.spacenet2 import STYLES, render_scene, tile_transform, to_dn

    rng = np.random.default_rng(5)
    paths = []
    for k in range(count):
        image, _, _ = render_scene(rng, STYLES["vegas"], size=size)
        path = folder / f"scene{k:03d}.tif"
        with rasterio.open(path, "w", driver="GTiff", height=size, width=size, count=3,
                           dtype="uint16", crs="EPSG:4326",
                           transform=tile_transform(STYLES["vegas"], k)) as dst:
            dst.write(to_dn(image)[[4, 2, 1]])
        paths.append(path)
    return paths


def model_args(run: Path | None, backend: str, model: Path | None) -> tuple[list, list]:
    """predict.py's arguments that name the model (before its other options, and the config
    overrides after them): the training run's config and weights for backend torch, else the
    exported folder."""
    if backend == "torch":
        return (["--config-file", str(run / "config.yaml")],
                ["MODEL.WEIGHTS", str(run / "model_final.pth")])
    return ["--backend", backend, "--model", str(model)], []


def run_engine(model: tuple[list, list], scenes: Path, out: Path, engine: list[str]) -> dict:
    cmd = [sys.executable, "-W", "ignore", str(ROOT / "tools" / "predict.py"), *model[0],
           "--input", str(scenes / "*.tif"), "--output", str(out), *engine, *model[1]]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{engine}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    rows = pd.read_parquet(out / "manifest.parquet")
    per_worker = rows.groupby("worker")["peak_rss_mb"].max()
    return {"wall_s": round(wall, 2),
            "scenes_per_s": round(len(rows) / wall, 3),
            "scene_s_median": round(float(rows.seconds.median()), 3),
            "workers": int(per_worker.size),
            "peak_rss_mb_per_worker": [float(v) for v in per_worker.sort_values()],
            "buildings": int(rows.buildings.sum()),
            "statuses": rows.status.value_counts().to_dict()}


def ray_init_seconds() -> float:
    code = ("import time; t=time.perf_counter(); import ray; ray.init(num_cpus=2, "
            "include_dashboard=False, log_to_driver=False); print(time.perf_counter()-t)")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True,
                         text=True, check=True)
    return round(float(out.stdout.strip().splitlines()[-1]), 2)


def compare_outputs(first: Path, second: Path) -> dict:
    """Scene by scene, two predict.py output folders of the same scenes: how many scenes have
    equal building counts, and the IoU of the union of each scene's polygons (min and median;
    1.0 for a scene without buildings in both), over the scenes both finished (the others are
    counted)."""
    equal, ious = 0, []
    done = [{p.name for p in (folder / "buildings").glob("*.parquet")}
            for folder in (first, second)]
    names = sorted(done[0] & done[1])
    for name in names:
        a = gpd.read_parquet(first / "buildings" / name).geometry.values
        b = gpd.read_parquet(second / "buildings" / name).geometry.values
        equal += int(len(a) == len(b))
        ua, ub = shapely.union_all(a), shapely.union_all(b)
        union = shapely.union(ua, ub).area
        ious.append(1.0 if union == 0 else float(shapely.intersection(ua, ub).area / union))
    return {"scenes": len(names), "in_one_output_only": len(done[0] ^ done[1]),
            "equal_building_counts": equal,
            "union_iou_min": round(min(ious), 6) if ious else None,
            "union_iou_median": round(float(np.median(ious)), 6) if ious else None}


ENGINES = {"local": ["--engine", "local"],
           "ray": ["--engine", "ray", "--workers", "2", "--cpus-per-worker", "1"]}


def main() -> None:
    from mnc_d2.export.bundle import BACKEND_FILES  # predict.py's --backend choices

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path,
                        help="training run folder (config.yaml, weights); backend torch")
    parser.add_argument("--backend", default="torch", choices=("torch", *BACKEND_FILES),
                        help="predict.py's --backend; other than torch: give --model")
    parser.add_argument("--model", type=Path, help="exported model folder (other backends)")
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--size", type=int, default=650)
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of each engine, the order alternating between rounds")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds} must be at least 1")
    if args.backend == "torch" and args.run is None:
        parser.error("backend torch: give --run (the training run's folder)")
    if args.backend != "torch" and args.model is None:
        parser.error(f"--backend {args.backend}: give --model (tools/export_model.py's folder)")
    engines = dict(ENGINES)
    if args.backend != "torch":  # the runtime's default may count physical cores only
        engines["local"] = [*ENGINES["local"], "--torch-threads", str(os.cpu_count() or 1)]
    model = model_args(args.run, args.backend, args.model)
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU",
              "cpu": cpu_model(), "scenes": args.scenes, "scene_px": args.size,
              "backend": args.backend, "rounds": args.rounds, "engines": engines}
    if args.backend == "torch":
        report["run"] = str(args.run)
    else:
        report["model"] = str(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "scenes").mkdir()
        write_scenes(tmp / "scenes", args.scenes, args.size)
        report["ray_init_s"] = ray_init_seconds()
        runs = {name: [] for name in engines}
        for k in range(args.rounds):
            order = list(engines) if k % 2 == 0 else list(engines)[::-1]
            for name in order:
                result = run_engine(model, tmp / "scenes", tmp / f"{name}{k}", engines[name])
                runs[name].append({"round": k, **result})
        report["agreement_first_round"] = compare_outputs(tmp / "local0", tmp / "ray0")
    report["runs"] = runs
    report["median_wall_s"] = {n: float(np.median([r["wall_s"] for r in rs]))
                               for n, rs in runs.items()}
    ratios = [ray["wall_s"] / local["wall_s"] for local, ray in zip(runs["local"], runs["ray"])]
    report["ray_vs_local_wall"] = {"per_round": [round(r, 3) for r in ratios],
                                   "median": round(float(np.median(ratios)), 3)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
