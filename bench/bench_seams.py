#!/usr/bin/env python
"""Scenes cut into tiles, predicted tile by tile and merged back, against the scene predicted
whole: what tools/merge_footprints.py makes of the buildings on the seams.

For each trained run (a model seed) and each of ``--scenes-per-style`` synthetic scenes of
``--size`` px per city style (rendered by the benchmark's generator in ``--setting``, buildings,
trees and clutter scaled to the scene's area, from scene seeds used nowhere else: not for
training, not for choosing the merge's defaults), predict.py runs over the whole scene and over
its tiles in each layout:

- ``abut_650``: 2 x 2 tiles abutting at 650 px (SpaceNet's tile grid);
- ``abut_433``: 3 x 3 tiles abutting at 433 px (seams through other buildings);
- ``overlap_100``: 2 x 2 tiles of 700 px overlapping by 100 px;
- ``collar_overlap``: two scenes, columns 0-800 and the last 800 (overlapping by 300 px at
  1,300 px), the first with a nodata collar over its last 150 columns (an orthorectified
  scene's collar: its data ends 150 px inside its grid, inside the other scene).

Each layout's per-tile buildings are then put together three ways: ``pieces`` (the tiles' files
side by side, nothing merged), ``any_overlap`` (buildings of different tiles whose overlap has
any area unioned: the previous rule) and ``seams`` (merge_footprints with
its defaults); the collar layout a fourth, ``seams_grid`` (merge_footprints with the files' record
of where their data lies removed: each scene's grid as its edge, as before this version), and
scored (SpaceNet rules, IoU 0.5, in the whole scene's pixels) against the
scene's truth and against the whole-scene prediction. Prints one JSON object.

    python -m bench.bench_seams --runs .cache/bench/accuracy/runs/mnc5_60img_600it/seed{0,1,2} \\
        --setting default > bench/results/seams_default.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import shapely
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {"abut_650": (650, 0), "abut_433": (433, 0), "overlap_100": (700, 100),
           "collar_overlap": (800, 150)}  # the collar layout: (scene width, collar width)
METHODS = ("pieces", "any_overlap", "seams")
COLLAR = "collar_overlap"
STYLE_NAMES = ("vegas", "khartoum")


def render(path: Path, style: str, setting: str, size: int, seed: tuple) -> list:
    """Write one 3-band scene (EPSG:4326) and return its truth footprints (scene pixels),
    clipped to the scene as SpaceNet's tiles clip them."""
    from mnc_d2.synthetic.spacenet2 import (LABEL_GRID, SETTINGS, STYLES, render_scene,
                                            tile_transform, to_dn)

    scale = (size / LABEL_GRID) ** 2
    base = SETTINGS[setting]
    drawn = dataclasses.replace(base, density=base.density * scale, trees=base.trees * scale,
                                clutter=int(round(base.clutter * scale)))
    rng = np.random.default_rng(list(seed))
    footprints: list = []
    while not footprints:  # the generator leaves some tiles empty: draw again
        image, footprints, _ = render_scene(rng, STYLES[style], size=size, setting=drawn)
    with rasterio.open(path, "w", driver="GTiff", height=size, width=size, count=3,
                       dtype="uint16", crs="EPSG:4326",
                       transform=tile_transform(STYLES[style], 0, size=size)) as dst:
        dst.write(to_dn(image)[[4, 2, 1]])
    inside = shapely.intersection(np.asarray(footprints, dtype=object), shapely.box(0, 0, size,
                                                                                    size))
    # a building the edge cuts into parts is one truth row per part, as SpaceNet's tiles list
    # them (the scorer's reader would keep only a MultiPolygon's first part)
    return [g for g in shapely.get_parts(inside) if g.area > 0]


def _abutting(length: int, tile: int) -> list[tuple[int, int]]:
    starts = list(range(0, length - tile + 1, tile))
    return list(zip(starts, starts[1:] + [length]))  # the last takes the rest


def cut(scene: Path, folder: Path, layout: str) -> list[Path]:
    """The scene's tiles in ``layout`` (:data:`LAYOUTS`) as GeoTIFFs."""
    from mnc_d2.inference.tiling import tile_grid

    tile, overlap = LAYOUTS[layout]
    paths = []
    with rasterio.open(scene) as src:
        if layout == COLLAR:
            return _collared(src, folder, f"{scene.stem}__{layout}", tile, overlap)
        if overlap:
            windows = [t.window for t in tile_grid(src.width, src.height, tile, overlap)]
        else:
            windows = [Window(x0, y0, x1 - x0, y1 - y0) for y0, y1 in _abutting(src.height, tile)
                       for x0, x1 in _abutting(src.width, tile)]
        for k, window in enumerate(windows):
            path = folder / f"{scene.stem}__{layout}_{k}.tif"
            profile = dict(src.profile, width=window.width, height=window.height,
                           transform=src.window_transform(window))
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(src.read(window=window))
            paths.append(path)
    return paths


def _collared(src, folder: Path, stem: str, width: int, collar: int) -> list[Path]:
    """:data:`COLLAR`'s two scenes of ``src``: columns 0..width with DN 0 (declared nodata) in
    the last ``collar`` of them, and the last ``width`` columns."""
    paths = []
    for k, x0 in enumerate((0, src.width - width)):
        window = Window(x0, 0, width, src.height)
        data = src.read(window=window)
        if k == 0:
            data[:, :, width - collar:] = 0
        path = folder / f"{stem}_{k}.tif"
        profile = dict(src.profile, width=width, height=src.height, nodata=0,
                       transform=src.window_transform(window))
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
        paths.append(path)
    return paths


def without_data_regions(folder: Path) -> Path:
    """A copy of ``folder``'s per-scene files without predict.py's record of where each
    scene's data lies (its grid only, as files were written before this version)."""
    import pyarrow.parquet as pq

    from mnc_d2.inference.scenes import GRID_KEY

    out = folder.parent / f"{folder.name}_grid"
    (out / "buildings").mkdir(parents=True)
    for path in sorted(folder.glob("buildings/*.parquet")):
        table = pq.read_table(path)
        meta = dict(table.schema.metadata)
        grid = json.loads(meta[GRID_KEY])
        grid.pop("data", None)
        meta[GRID_KEY] = json.dumps(grid).encode()
        pq.write_table(table.replace_schema_metadata(meta), out / "buildings" / path.name)
    return out


def predict(run: Path, inputs: list[Path], out: Path) -> None:
    listing = out.parent / f"{out.name}.txt"
    listing.write_text("\n".join(str(p) for p in inputs))
    cmd = [sys.executable, "-W", "ignore", str(ROOT / "tools" / "predict.py"), "--config-file",
           str(run / "config.yaml"), "--input", f"@{listing}", "--output", str(out),
           "MODEL.WEIGHTS", str(run / "model_final.pth")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"predict.py exit {proc.returncode}\n{proc.stderr[-3000:]}")


def any_overlap(folder: Path):
    """The merge before this version: buildings of different scenes with any overlap of
    positive area unioned (connected components), the higher score kept."""
    import geopandas as gpd

    from mnc_d2.inference.tiling import overlap_groups

    frame = pd.concat([gpd.read_parquet(p) for p in sorted(folder.glob("buildings/*.parquet"))],
                      ignore_index=True)
    label = overlap_groups(frame.geometry.to_numpy(), frame["scene"].to_numpy())
    rows = []
    for _, members in frame.groupby(label, sort=False):
        rows.append((shapely.union_all(members.geometry.to_numpy()), members.score.max()))
    return gpd.GeoDataFrame({"score": [s for _, s in rows]}, geometry=[g for g, _ in rows],
                            crs=frame.crs)


def in_pixels(frame, transform) -> np.ndarray:
    """(N,) the frame's polygons (EPSG:4326) in the scene's pixel coordinates."""
    inverse = ~transform
    return shapely.transform(frame.to_crs("EPSG:4326").geometry.to_numpy(),
                             lambda xy: np.stack(inverse * (xy[:, 0], xy[:, 1]), axis=1))


def counts(truth: np.ndarray, found: np.ndarray, scores: np.ndarray) -> dict:
    from mnc_d2.evaluation.spacenet_metric import score

    result = score(pd.DataFrame({"ImageId": "AOI_0_Seam_img0", "geometry": list(truth)}),
                   pd.DataFrame({"ImageId": "AOI_0_Seam_img0", "geometry": list(found),
                                 "Confidence": scores}), images=["AOI_0_Seam_img0"])
    c = result.overall
    return {"tp": int(c.tp), "fp": int(c.fp), "fn": int(c.fn), "f1": round(float(c.f1), 4)}


def one_run(run: Path, seed: int, args, work: Path) -> list[dict]:
    import geopandas as gpd

    from mnc_d2.inference.merge import merge_footprints

    scenes, inputs = [], []
    for s, style in enumerate(STYLE_NAMES):
        for k in range(args.scenes_per_style):
            path = work / f"{style}{k}.tif"
            truth = render(path, style, args.setting, args.size, (7100, seed, s, k))
            layouts = {name: cut(path, work, name) for name in LAYOUTS}
            scenes.append((path, truth, layouts))
            inputs += [path, *[p for tiles in layouts.values() for p in tiles]]
    predicted = work / "pred"
    started = time.perf_counter()
    predict(run, inputs, predicted)
    rows = []
    for path, truth, layouts in scenes:
        with rasterio.open(path) as src:
            transform = src.transform
        whole = gpd.read_parquet(predicted / "buildings" / f"{path.stem}.parquet")
        whole_px = in_pixels(whole, transform)
        base = {"seed": seed, "scene": path.stem, "truth": len(truth)}
        rows.append({**base, "layout": "whole", "method": "whole", "buildings": len(whole),
                     "vs_truth": counts(np.asarray(truth, dtype=object), whole_px,
                                        whole.score.to_numpy())})
        for name, tiles in layouts.items():
            folder = work / f"{path.stem}_{name}"
            (folder / "buildings").mkdir(parents=True)
            for tile in tiles:
                shutil.copy(predicted / "buildings" / f"{tile.stem}.parquet",
                            folder / "buildings")
            pieces = pd.concat([gpd.read_parquet(p)
                                for p in sorted(folder.glob("buildings/*.parquet"))],
                               ignore_index=True)
            clock = time.perf_counter()
            merge_footprints(folder, folder / "city.parquet")
            merge_s = time.perf_counter() - clock
            made = {"pieces": pieces, "any_overlap": any_overlap(folder),
                    "seams": gpd.read_parquet(folder / "city.parquet")}
            if name == COLLAR:
                grids = without_data_regions(folder)
                merge_footprints(grids, grids / "city.parquet")
                made["seams_grid"] = gpd.read_parquet(grids / "city.parquet")
            for method in made:
                frame = made[method]
                px = in_pixels(frame, transform)
                rows.append({**base, "layout": name, "method": method, "buildings": len(frame),
                             "vs_truth": counts(np.asarray(truth, dtype=object), px,
                                                frame.score.to_numpy()),
                             "vs_whole": counts(whole_px, px, frame.score.to_numpy()),
                             **({"merge_s": round(merge_s, 3)} if method == "seams" else {})})
    print(f"seed {seed}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return rows


def summary(rows: list[dict]) -> dict:
    """Per layout and method: over the models (seeds), the mean and spread of the scenes'
    summed counts' F1 against truth and against the whole-scene prediction, and the buildings
    per whole-scene building."""
    frame = pd.DataFrame(rows)
    out = {}
    for (layout, method), part in frame.groupby(["layout", "method"], sort=False):
        per_seed = []
        for seed, g in part.groupby("seed"):
            whole = frame[(frame.seed == seed) & (frame.method == "whole")]
            entry = {"seed": int(seed)}
            for key in ("vs_truth", "vs_whole"):
                if key in g and g[key].notna().all():
                    tp, fp, fn = (sum(c[k] for c in g[key]) for k in ("tp", "fp", "fn"))
                    entry[key] = 2 * tp / max(2 * tp + fp + fn, 1)
            entry["count_ratio"] = g.buildings.sum() / max(whole.buildings.sum(), 1)
            per_seed.append(entry)
        out[f"{layout}/{method}"] = {
            key: [round(float(e[key]), 4) for e in per_seed]
            for key in ("vs_truth", "vs_whole", "count_ratio") if key in per_seed[0]}
    return out


def scene_parser(description: str, scenes_per_style: int) -> argparse.ArgumentParser:
    """The options this script and bench_input_scale.py share: runs, setting, scene size."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", nargs="+", required=True, help="trained run folders (seed0 ...)")
    parser.add_argument("--setting", default="default", choices=("default", "hard"))
    parser.add_argument("--size", type=int, default=1300)
    parser.add_argument("--scenes-per-style", type=int, default=scenes_per_style)
    return parser


def seeded_runs(runs: list[str]) -> list[tuple[int, Path]]:
    """(model seed, folder) of each run: the seed its ``seed<N>`` folder names, else its rank."""
    out = []
    for number, run in enumerate(map(Path, runs)):
        out.append((int(run.name.removeprefix("seed")) if run.name.startswith("seed")
                    else number, run))
    return out


def main(argv=None) -> int:
    args = scene_parser(__doc__.splitlines()[0], 2).parse_args(argv)
    rows = []
    for seed, run in seeded_runs(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            rows += one_run(run, seed, args, Path(tmp))
    from mnc_d2.inference.seams import SEAM_MIN_OVERLAP, SEAM_TOLERANCE_PX

    report = {"setting": args.setting, "size_px": args.size, "styles": list(STYLE_NAMES),
              "scenes_per_style": args.scenes_per_style, "layouts": LAYOUTS,
              "runs": [str(r) for r in args.runs],
              "cpu": platform.processor() or platform.machine(),
              "seam_tolerance_px": SEAM_TOLERANCE_PX,
              "seam_min_overlap": SEAM_MIN_OVERLAP, "summary": summary(rows), "rows": rows}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
