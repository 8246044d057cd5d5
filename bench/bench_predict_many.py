#!/usr/bin/env python
"""Many scenes: tools/predict.py --engine local vs --engine ray --workers 2, side by side.

Writes --scenes synthetic 3-band GeoTIFF scenes (--size px square, generator seed 5, Vegas
style), then runs tools/predict.py over all of them in a child process per engine with a
trained run's config and weights: wall time of the process, scenes per second, mean seconds per
scene (from the manifest), peak RSS per worker process (the manifest's peak_rss_mb; for local the
one process), and Ray's start-up cost (ray.init in a fresh process, and the first scene's
completion minus its own time). Prints one JSON object.

    python -m bench.bench_predict_many --run .cache/bench/accuracy/runs/mnc5_60img_600it/seed0
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

import numpy as np
import pandas as pd
import rasterio

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


def run_engine(run: Path, scenes: Path, out: Path, engine: list[str]) -> dict:
    cmd = [sys.executable, "-W", "ignore", str(ROOT / "tools" / "predict.py"), "--config-file",
           str(run / "config.yaml"), "--input", str(scenes / "*.tif"), "--output", str(out),
           *engine, "MODEL.WEIGHTS", str(run / "model_final.pth")]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{engine}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    rows = pd.read_parquet(out / "manifest.parquet")
    per_worker = rows.groupby("worker")["peak_rss_mb"].max()
    return {"engine": " ".join(engine), "wall_s": round(wall, 2),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="training run folder (config.yaml, weights)")
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--size", type=int, default=650)
    args = parser.parse_args()
    run = Path(args.run)
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU",
              "scenes": args.scenes, "scene_px": args.size, "run": str(run)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "scenes").mkdir()
        write_scenes(tmp / "scenes", args.scenes, args.size)
        report["ray_init_s"] = ray_init_seconds()
        report["local"] = run_engine(run, tmp / "scenes", tmp / "local",
                                     ["--engine", "local"])
        report["ray"] = run_engine(run, tmp / "scenes", tmp / "ray",
                                   ["--engine", "ray", "--workers", "2", "--cpus-per-worker", "1"])
        report["ray_vs_local_wall"] = round(report["ray"]["wall_s"] / report["local"]["wall_s"], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
