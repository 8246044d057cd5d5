#!/usr/bin/env python
"""predict.py on a large scene: wall time and peak RSS.

Writes a synthetic SIZE x SIZE 3-band GeoTIFF (block by block, so writing it needs little memory),
runs tools/predict.py on it in a child process with a trained run's config and weights, and
prints one JSON object with the wall time, tiles, buildings and the child's peak RSS.

    python -m bench.bench_predict --run output/demo [--size 10000]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from rasterio.windows import Window

from mnc_d2.synthetic.spacenet2 import STYLES, render_scene, tile_transform, to_dn
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="training output folder (config.yaml, "
                        "model_final.pth)")
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run = Path(args.run)
    with tempfile.TemporaryDirectory() as tmp:
        scene = Path(tmp) / "scene.tif"
        write_scene(scene, args.size, args.seed)
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve().parents[1] / "tools" / "predict.py"),
             "--config-file", str(run / "config.yaml"), "--input", str(scene), "--output",
             str(Path(tmp) / "out"), "MODEL.WEIGHTS", str(run / "model_final.pth")],
            capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        n = scene_buildings(Path(tmp) / "out")
    print(json.dumps({"machine": f"{platform.machine()}, CPU only", "scene_px": args.size,
                      "bands": 3, "wall_s": round(wall, 1), "peak_rss_gb": round(
                          peak_kb / 1024 ** 2, 2), "buildings": n}, indent=2))


if __name__ == "__main__":
    main()
