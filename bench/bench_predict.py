#!/usr/bin/env python
"""predict.py on a large scene: wall time, peak RSS and throughput per backend, side by side.

Writes a synthetic SIZE x SIZE 3-band GeoTIFF (block by block, so writing it needs little memory),
runs tools/predict.py on it in a child process per backend (torch: a trained run's config and
weights; onnxruntime, onnxruntime-int8, openvino, torchscript: tools/export_model.py's folder of
the same weights), each round every backend in turn, and prints one JSON object: per backend the
median wall time, the child's peak RSS, the buildings found, km2 per core-hour at 0.3 m pixels and
the speed-up over torch.

    python -m bench.bench_predict --run output/demo [--size 10000]
    python -m bench.bench_predict --run RUN --model EXPORTED --backends torch onnxruntime \
        onnxruntime-int8 --repeats 3
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
from rasterio.windows import Window

from mnc_d2.synthetic.spacenet2 import GSD_M, STYLES, render_scene, tile_transform, to_dn
from mnc_d2.inference.scenes import MANIFEST

BLOCK = 1000


def write_scene(path: Path, size: int, seed: int) -> None:
    profile = {"driver": "GTiff", "height": size, "width": size, "count": 3, "dtype": "uint16",
               "crs": "EPSG:4326", "transform": tile_transform(STYLES["vegas"], 0),
               "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate"}
    rng = np.random.default_rng(seed)
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, BLOCK):
            for col in range(0, size, BLOCK):
                h, w = min(BLOCK, size - row), min(BLOCK, size - col)
                image, _, _ = render_scene(rng, STYLES["vegas"], size=BLOCK)
                dst.write(to_dn(image)[[4, 2, 1], :h, :w], window=Window(col, row, w, h))


def scene_buildings(out_dir: Path) -> int:
    """Buildings predict.py found in its one scene, from the run's manifest (an error when the
    scene did not end ``ok``)."""
    row = pd.read_parquet(out_dir / MANIFEST).iloc[-1]
    if row["status"] != "ok":
        sys.exit(f"predict.py: scene {row['scene']} ended {row['status']}: {row.get('error')}")
    return int(row["buildings"])


def run_predict(scene: Path, out: Path, source: list[str]) -> tuple[float, float]:
    """tools/predict.py on ``scene`` in a child process: (wall s, the child's own peak RSS GB,
    from its rusage)."""
    out.mkdir(parents=True)
    with open(out.parent / f"{out.name}.stderr", "w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve().parents[1] / "tools" / "predict.py"),
             "--input", str(scene), "--output", str(out), *source],
            stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        if code:
            err.seek(0)
            sys.exit(f"predict.py {' '.join(source)}: exit {code}\n{err.read()[-3000:]}")
    return wall, usage.ru_maxrss / 1024 ** 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="training output folder (config.yaml, "
                        "model_final.pth): the torch backend")
    parser.add_argument("--model", help="tools/export_model.py's folder of the same weights: "
                        "also time these exported backends")
    parser.add_argument("--backends", nargs="+", default=["torch"],
                        help="backends side by side (torch needs --run, the others --model)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds; each round runs every backend once, in turn")
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", help="what the model is, for the report's table (e.g. "
                        "'R-50-FPN MNC, random init')")
    args = parser.parse_args()
    run = Path(args.run)
    sources = {}
    for backend in args.backends:
        if backend == "torch":
            sources[backend] = ["--config-file", str(run / "config.yaml"), "MODEL.WEIGHTS",
                                str(run / "model_final.pth")]
        elif args.model:
            sources[backend] = ["--backend", backend, "--model", args.model]
        else:
            sys.exit(f"--backends {backend}: pass --model, the exported folder")
    walls = {b: [] for b in sources}
    found, peak = {}, {b: 0.0 for b in sources}
    with tempfile.TemporaryDirectory() as tmp:
        scene = Path(tmp) / "scene.tif"
        write_scene(scene, args.size, args.seed)
        for _ in range(args.repeats):
            for backend, source in sources.items():
                out = Path(tmp) / f"out_{backend}_{len(walls[backend])}"
                wall, rss = run_predict(scene, out, source)
                walls[backend].append(round(wall, 2))
                found.setdefault(backend, scene_buildings(out))
                peak[backend] = max(peak[backend], rss)
    km2 = (args.size * GSD_M / 1000) ** 2
    cores = os.cpu_count()
    base = float(np.median(walls["torch"])) if "torch" in walls else None
    runs = []
    for backend, w in walls.items():
        median = float(np.median(w))
        runs.append({"backend": backend, "wall_s": round(median, 1), "walls_s": w,
                     "buildings": found[backend], "peak_rss_gb": round(peak[backend], 2),
                     "km2_per_core_hour": round(km2 / (median * cores / 3600), 1),
                     **({"speedup_vs_torch": round(base / median, 2)} if base else {})})
    from bench.bench_demo import cpu_model

    report = {"machine": f"{platform.machine()}, {cores} CPUs, CPU only", "cpu": cpu_model(),
              **({"model": args.label} if args.label else {}),
              "scene_px": args.size, "bands": 3, "gsd_m": GSD_M, "scene_km2": round(km2, 2),
              "repeats": args.repeats, "runs": runs}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
