#!/usr/bin/env python
"""The web map at scale: load time, bytes and frame time for 1, 100, 1,000 scenes, in a browser.

For each size, a synthetic prediction folder (``--scene-px`` px 3-band scenes laid out on a
grid, ``--buildings`` random footprints per scene with random scores, a manifest with one failed
scene) is turned into a site by ``mnc_d2.viewer.site.build_site`` (timed), served on 127.0.0.1
and opened in Debian's headless chromium (selenium; software WebGL, so frame times are a CPU's,
not a GPU's). Measured: the site build time; time from navigation to the first rendered frame of
the footprints and to the map being idle (everything drawn); bytes transferred (the network
log's encoded lengths); the median and 90th percentile frame time while panning across the
city (``requestAnimationFrame`` intervals over ``--pan-frames`` frames), then the same zoomed in
to zoom 17 at the city's centre (where buildings are inspected), with the buildings drawn there;
at the city view also the density cells drawn (a city's zoomed-out layer) and the time from a
move of the score slider (to 0.8, 0.2, then back to 0.5) until the map is drawn again. Each size
is measured with the footprints as one GeoJSON and as vector tiles (``--vector-tiles``); with
``--truth``, with truth matched at site build (the TP / FP / FN colours; a city's truth as tiles
and its misses zoomed out).

    python -m bench.bench_viewer --scenes 1 100 1000 > bench/results/viewer.json
    python -m bench.bench_viewer --scenes 100 1000 --truth > bench/results/viewer_truth.json

Prints one JSON object (logs on stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import shapely

from mnc_d2.inference.scenes import SceneRow, append_manifest, write_buildings_parquet
from mnc_d2.synthetic.spacenet2 import STYLES, tile_transform
from mnc_d2.viewer.serve import start
from mnc_d2.viewer.site import build_site

logger = logging.getLogger("bench_viewer")


def make_folder(root: Path, scenes: int, buildings: int, scene_px: int, seed: int = 0,
                truth: bool = False) -> Path:
    """The synthetic prediction folder ``root``/pred; with ``truth``, also ``root``/truth.parquet
    (GeoParquet, EPSG:4326): nine in ten footprints shifted by a pixel (found), the tenth left
    out (an FP), and one footprint per scene nothing found (an FN)."""
    rng = np.random.default_rng(seed)
    out = root / "pred"
    rows, truth_polys = [], []
    for k in range(scenes):
        transform = tile_transform(STYLES["vegas"], k, size=scene_px)
        path = root / "scenes" / f"scene{k}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(path, "w", driver="GTiff", height=scene_px, width=scene_px, count=3,
                           dtype="uint16", crs="EPSG:4326", transform=transform) as dst:
            dst.write(rng.integers(200, 1200, (3, scene_px, scene_px), dtype=np.uint16))
        xy = rng.uniform(10, scene_px - 30, (buildings, 2))
        wh = rng.uniform(5, 20, (buildings, 2))
        polys = [shapely.box(*(transform @ (x, y + h)), *(transform @ (x + w, y)))
                 for (x, y), (w, h) in zip(xy, wh)]
        write_buildings_parquet(out / "buildings" / f"scene{k}.parquet", f"scene{k}", polys,
                                rng.uniform(0, 1, buildings).round(4).tolist(), "EPSG:4326")
        if truth:
            truth_polys += [shapely.box(*(transform @ (x + 1, y + h + 1)),
                                        *(transform @ (x + w + 1, y + 1)))
                            for j, ((x, y), (w, h)) in enumerate(zip(xy, wh)) if j % 10]
            truth_polys.append(shapely.box(*(transform @ (scene_px - 20, 20)),
                                           *(transform @ (scene_px - 5, 5))))
        rows.append(SceneRow(f"scene{k}", str(path), "ok", buildings))
    rows.append(SceneRow("lost", str(root / "scenes" / "lost.tif"), "failed",
                         error="FileNotFoundError: lost.tif does not exist"))
    append_manifest(out, rows)
    (out / "run.json").write_text(json.dumps({"score_thresh": 0.5}))
    if truth:
        import geopandas as gpd

        gpd.GeoDataFrame(geometry=truth_polys, crs="EPSG:4326").to_parquet(root / "truth.parquet")
    return out


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--enable-unsafe-swiftshader",
                "--window-size=1200,900", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


PAN = """
const done = arguments[arguments.length - 1];
const map = window.viewerMap, frames = [], n = arguments[0], dx = arguments[1], dy = arguments[2];
let last = performance.now(), i = 0;
function step(now) {
  frames.push(now - last); last = now; i += 1;
  map.panBy([dx, dy], {duration: 0});
  if (i < n) requestAnimationFrame(step); else done(frames.slice(2));
}
requestAnimationFrame(step);
"""


# the score slider moved at the city view: time until the map is drawn again at the new
# threshold (the buildings' filter; a city's density cells recounted and redrawn)
SLIDE = """
const done = arguments[arguments.length - 1];
const map = window.viewerMap, t0 = performance.now();
window.viewerSetThreshold(arguments[0]);
map.once("idle", () => done(performance.now() - t0));
map.triggerRepaint();
"""


ZOOM_IN = """
const done = arguments[arguments.length - 1];
const map = window.viewerMap;
map.jumpTo({center: [arguments[0], arguments[1]], zoom: 17});
map.once("idle", () => done(true));
"""


IDLE_LIMIT_S = 900


def measure(site: Path, pan_frames: int) -> dict:
    """The page of ``site`` in the browser (module docstring); a page that is not drawn
    within ``IDLE_LIMIT_S`` gives {"first_render_s", "idle_limit_s"} only."""
    server, url = start(site)
    driver = browser()
    try:
        driver.set_script_timeout(600)
        start_t = time.perf_counter()
        driver.get(url)
        first = None
        while True:
            state = driver.execute_script(
                "return window.viewerMap && window.viewerMap.getLayer('buildings-fill') ? "
                "(window.viewerState.ready ? 2 : 1) : 0")
            if state and first is None:
                first = time.perf_counter() - start_t
            if state == 2:
                break
            if time.perf_counter() - start_t > IDLE_LIMIT_S:
                logger.warning("%s: not drawn in %d s", site, IDLE_LIMIT_S)
                return {"first_render_s": None if first is None else round(first, 2),
                        "idle_limit_s": IDLE_LIMIT_S}
            time.sleep(0.05)
        idle = time.perf_counter() - start_t
        # a city's view zoomed out: the density cells drawn (none for one GeoJSON, where the
        # buildings themselves are drawn at every zoom)
        cells = driver.execute_script(
            "const f = window.viewerMap.getLayer('density') ? window.viewerMap"
            ".queryRenderedFeatures({layers: ['density']}) : [];"
            "return new Set(f.map(x => JSON.stringify(x.geometry.coordinates[0][0]))).size")
        slide_ms = [driver.execute_async_script(SLIDE, t) for t in (0.8, 0.2, 0.5)]
        frames = driver.execute_async_script(PAN, pan_frames, 40, 25)
        # then close in on the city's centre, where a mapper inspects buildings (zoom 17:
        # about 500 m across the window; a city's buildings are drawn from zoom 16 on), and
        # pan there by small steps (staying over the city)
        west, south, east, north = json.loads((site / "data" / "meta.json").read_text())["bounds"]
        driver.execute_async_script(ZOOM_IN, (west + east) / 2, (south + north) / 2)
        close_frames = driver.execute_async_script(PAN, pan_frames, 4, 3)
        drawn_close = driver.execute_script(
            "const f = window.viewerMap.queryRenderedFeatures({layers: ['buildings-fill']});"
            "return new Set(f.map(x => x.properties.scene + '/' + x.properties.building_id))"
            ".size")
        received = 0
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.loadingFinished":
                received += int(message["params"].get("encodedDataLength", 0))
        count = driver.execute_script("return window.viewerState.count")
    finally:
        driver.quit()
        server.shutdown()
    frames, close_frames = np.asarray(frames), np.asarray(close_frames)
    return {"first_render_s": round(first, 2), "idle_s": round(idle, 2),
            "bytes": received, "buildings_shown": count, "density_cells_drawn": int(cells),
            "slider_ms": [round(float(v), 1) for v in slide_ms],
            "frame_ms_median": round(float(np.median(frames)), 1),
            "frame_ms_p90": round(float(np.percentile(frames, 90)), 1),
            "zoom17_buildings_drawn": int(drawn_close),
            "zoom17_frame_ms_median": round(float(np.median(close_frames)), 1),
            "zoom17_frame_ms_p90": round(float(np.percentile(close_frames, 90)), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--buildings", type=int, default=200, help="per scene")
    parser.add_argument("--scene-px", type=int, default=256)
    parser.add_argument("--overview-px", type=int, default=256)
    parser.add_argument("--pan-frames", type=int, default=60)
    parser.add_argument("--truth", action="store_true",
                        help="also truth (make_folder's), matched at site build: TP / FP / FN "
                             "on the map, a city's misses zoomed out")
    parser.add_argument("--vector-tiles", nargs="+", default=["never", "always"],
                        choices=("never", "always", "auto"),
                        help="footprint modes to measure at each size (build_site's "
                             "vector_tiles): one GeoJSON, vector tiles")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    from bench.bench_demo import cpu_model

    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, software WebGL "
                         "(headless chromium, SwiftShader)", "cpu": cpu_model(),
              "buildings_per_scene": args.buildings, "scene_px": args.scene_px,
              "overview_px": args.overview_px, "runs": []}
    for n in args.scenes:
        with tempfile.TemporaryDirectory() as tmp:
            folder = make_folder(Path(tmp), n, args.buildings, args.scene_px,
                                 truth=args.truth)
            truth = [str(Path(tmp) / "truth.parquet")] if args.truth else None
            for mode in args.vector_tiles:
                site = Path(tmp) / f"site_{mode}"
                t = time.perf_counter()
                meta = build_site(folder, site, overview_px=args.overview_px,
                                  vector_tiles=mode, truth=truth)
                build_s = time.perf_counter() - t
                run = {"scenes": n, "buildings": n * args.buildings,
                       "footprints": meta["footprints"]["kind"], "build_s": round(build_s, 2),
                       "truth": meta["truth_counts"],
                       **measure(site, args.pan_frames)}
                logger.info("%s", run)
                report["runs"].append(run)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
