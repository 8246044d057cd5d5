"""Build the static web map of a ``tools/predict.py`` output folder.

Site layout (any plain web server can host it; ``tools/view.py --serve`` runs one on 127.0.0.1)::

    SITE/index.html, viewer.js, viewer.css   the page (mnc_d2/viewer/static)
    SITE/vendor/maplibre-gl.*                the vendored map library (offline)
    SITE/data/meta.json                      threshold, bounds, scenes (status, error, outline,
                                             overview image and its corners), counts
    SITE/data/buildings.geojson              every building (EPSG:4326): scene, building_id,
                                             score, area_m2 (and match, with truth); or, for a
                                             city (``vector_tiles``), instead:
    SITE/data/footprints/{z}/{x}/{y}.pbf     the same as vector tiles (:mod:`.tiles`)
    SITE/data/scores.f64                     every score, sorted (exact counts at any threshold)
    SITE/data/density.json, density_scores.f64  (a city) buildings per grid cell with their
                                             scores, drawn zoomed out (:mod:`.density`)
    SITE/data/truth.geojson                  (with truth) the truth polygons: match at the
                                             run's threshold, the score of the building that
                                             matched each (-1: none); for a city, instead:
    SITE/data/truth/{z}/{x}/{y}.pbf          the same as vector tiles, and
    SITE/data/misses.json, misses_scores.f64  the truth polygons the rules keep per grid cell
                                             with their matched scores (misses zoomed out)
    SITE/data/tp_scores.f64, fp_scores.f64   (with truth) the TP and FP buildings' scores,
                                             sorted (TP / FP / FN at any threshold)
    SITE/data/overview/{z}/{x}/{y}.png       (a city) one imagery pyramid (:mod:`.mosaic`)
                                             instead of the per-scene images below
    SITE/imagery/<scene>.png                 each readable scene as the model saw its bands,
                                             stretched, at most ``overview_px`` on its long side

What is pre-rendered: the footprints (one GeoJSON, or vector tiles) and one overview image per
scene (or, for a city, one overview pyramid). What needs
the server (``tools/view.py --serve``, :mod:`.serve`): full-resolution imagery, cut on request
from the GeoTIFFs / COGs into web-mercator tiles (rio-tiler, the overview's stretch); a static
host shows the overviews only, so zooming in past ``overview_px`` per scene blurs there.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from ..evaluation.folder_scoring import (FolderInputError, city_frame, read_city, read_run,
                                         read_scene_buildings, read_truth, recorded_grids,
                                         remap_scene, scene_frames)
from ..utils.atomic import atomic_path, atomic_write
from .assets import vendor_dir
from .density import write_density
from .mosaic import max_zoom_for, write_overview_pyramid
from .tiles import write_sorted_scores, write_vector_tiles

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
PAGE_FILES = ("index.html", "viewer.js", "viewer.css")
SITE_NAMES = {*PAGE_FILES, "vendor", "data", "imagery"}  # what a site's folder holds


# The folder or a truth file cannot be shown: the message names the file and the fix.
ViewerInputError = FolderInputError


def _bands(run: dict) -> list[int]:
    """The bands the run read from its scenes, first three: predict.py --scene-bands when given,
    else its config's INPUT.BANDS, else 1..len(PIXEL_MEAN)."""
    if run.get("scene_bands"):
        return [int(b) for b in run["scene_bands"]][:3]
    import yaml

    cfg = yaml.safe_load(run.get("config", "")) or {}
    bands = (cfg.get("INPUT") or {}).get("BANDS") or []
    if not bands:
        bands = list(range(1, len((cfg.get("MODEL") or {}).get("PIXEL_MEAN") or [0, 0, 0]) + 1))
    return [int(b) for b in bands][:3]


def _scene_image(path: str, bands: list[int], out: Path | None, overview_px: int):
    """Write the overview PNG of a scene (unless ``out`` is None); returns (its corners (lon,
    lat), its tile source, the overview's metres per pixel), or None (unreadable)."""
    import cv2
    import rasterio
    from rasterio.enums import Resampling

    from ..evaluation.visualize import stretch_limits, stretch_to_uint8

    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                return None
            scale = min(1.0, overview_px / max(src.width, src.height))
            h, w = max(1, int(src.height * scale)), max(1, int(src.width * scale))
            chosen = [b for b in bands if b <= src.count] or [1]
            chosen = (chosen * 3)[:3]
            data = src.read(chosen, out_shape=(3, h, w), resampling=Resampling.average)
            # GDAL's dataset mask (nodata value, internal mask or alpha band): the overview's
            # alpha, so that a scene's nodata collar hides neither its neighbours nor the
            # basemap, as on the server's tiles (rio-tiler reads the same mask)
            alpha = src.dataset_mask(out_shape=(h, w))
            # one stretch for the overview and the full-resolution tiles the server cuts, from
            # the scene's valid pixels
            stretch = stretch_limits(data, valid=alpha > 0)
            corners = _grid_corners((src.crs, src.transform, src.width, src.height))
    except Exception as exc:  # an unreadable scene shows no image, the rest of the map stays
        from ..inference.sources import REDACTED_QUERY

        hint = ("; predict.py keeps no URL's query string (a signed URL's token): give a local "
                "copy of the scenes with --scene-root") if REDACTED_QUERY in path else ""
        logger.warning("no imagery for %s: %s%s", path, exc, hint)
        return None
    if out is not None:
        image = stretch_to_uint8(data, limits=stretch)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            if not cv2.imwrite(str(tmp), np.dstack([cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                                    alpha])):
                raise OSError(f"could not write {out} (cv2.imwrite failed)")
    from pyproj import Geod

    top_m = Geod(ellps="WGS84").inv(*corners[0], *corners[1])[2]
    return corners, {"path": path, "bands": chosen, "stretch": stretch}, float(top_m) / w


def _grid_corners(grid) -> list[list[float]]:
    """The (lon, lat) corners of a recorded scene grid ((crs, transform, width, height):
    :func:`mnc_d2.evaluation.folder_scoring.recorded_grids`), clockwise from the top left."""
    from pyproj import Transformer

    crs, transform, width, height = grid
    xs, ys = zip(*[transform @ c for c in [(0, 0), (width, 0), (width, height), (0, height)]])
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xs, ys)
    return [[float(a), float(b)] for a, b in zip(lon, lat)]


def _buildings(folder: Path, city: str | None):
    """(buildings in EPSG:4326, scenes whose file cannot be read: name -> reason)."""
    if city:
        return read_city(city), {}
    return read_scene_buildings(folder)


def _match_truth(frame, scenes: list[dict], paths: dict, truth_paths: list[str],
                 threshold: float, city: bool = False, grids: dict | None = None,
                 regions: dict | None = None):
    """TP/FP of every building and the score of the building each truth polygon matched, per
    scene by the SpaceNet tester's rules in the scene's pixel grid, or for a merged ``city``
    once over the whole city (tools/score.py's matching, with ``--city`` for the latter:
    :mod:`mnc_d2.evaluation.folder_scoring`), and the shape of each match (tools/score.py
    --polygon-metrics).

    Matched once over every building, whatever its score: the rules take buildings in
    descending score, each matching one still-unmatched truth polygon, so what a building
    matches depends only on the buildings above it, and is the same at any threshold at or
    below its score. Hence the page's counts and colours at any slider threshold are the
    scorer's at that threshold. Returns the buildings' columns (``match``: TP, FP or ignored,
    :data:`SHAPE_COLUMNS`, NaN where they do not apply), the truth GeoDataFrame (EPSG:4326,
    ``match`` at ``threshold``, ``matched_score``: the score of the building that matched it,
    -1 for none, ``scene``), the counts at ``threshold`` and the shape summary of the matched
    pairs at or above it. ``grids``, ``regions``: the scenes' grids and data regions the folder
    records (:mod:`mnc_d2.evaluation.folder_scoring`)."""
    import geopandas as gpd
    import pandas as pd

    from ..evaluation.folder_scoring import frame_pair_metrics
    from ..evaluation.polygon_metrics import summarize
    from ..evaluation.spacenet_metric import score
    from ..geometry.polygons import pixel_to_map

    match = np.full(len(frame), "FP", dtype=object)
    scores = frame["score"].to_numpy(dtype=float)
    shape = {name: np.full(len(frame), np.nan) for name in SHAPE_COLUMNS}
    truth_rows, pairs = [], []
    readable = {s["scene"]: paths[s["scene"]] for s in scenes
                if s["status"] in ("ok", "skipped")}  # a failed scene has no buildings to match
    truth = read_truth(truth_paths)
    frames = ([city_frame(frame, readable, truth, -np.inf, grids, regions)] if city else
              scene_frames(frame, readable, truth, -np.inf, grids, regions))
    for one in frames:
        result = score(one.truth, one.proposals, group_by="none")
        matched = np.flatnonzero(result.proposal_match >= 0)
        match[one.rows[matched]] = "TP"
        match[one.rows[~result.proposal_kept]] = "ignored"  # the rules' area filter: no FP
        # an FP's best IoU with any truth; a TP's shape against the truth it matched
        shape["iou"][one.rows] = np.where(result.proposal_kept, result.proposal_iou, np.nan)
        metrics, _ = frame_pair_metrics(one, result, city=city)
        for name, column in SHAPE_COLUMNS.items():
            shape[name][one.rows[matched]] = metrics[column].to_numpy()
        pairs.append(metrics[scores[one.rows[matched]] >= threshold])
        matched_score = np.full(len(one.truth), -1.0)
        matched_score[result.proposal_match[matched]] = scores[one.rows[matched]]
        geo = gpd.GeoSeries([pixel_to_map(g, one.transform) for g in one.truth.geometry],
                            crs=one.crs)
        truth_rows.append(gpd.GeoDataFrame(
            {"scene": one.scene,
             "match": np.where(~result.truth_kept, "ignored",
                               np.where(matched_score >= threshold, "TP", "FN")),
             "matched_score": matched_score},
            geometry=geo.to_crs("EPSG:4326").to_numpy(), crs="EPSG:4326"))
    truth_out = (pd.concat(truth_rows, ignore_index=True) if truth_rows else
                 gpd.GeoDataFrame({"scene": [], "match": [], "matched_score": []}, geometry=[],
                                  crs="EPSG:4326"))
    counts = match_counts(match, scores, int((truth_out["match"] != "ignored").sum()),
                          threshold)
    summary = summarize(pd.concat(pairs, ignore_index=True))["all"] if pairs else None
    return {"match": match, **shape}, truth_out, counts, summary


def match_counts(match: np.ndarray, scores: np.ndarray, truths: int, threshold: float) -> dict:
    """TP, FP and FN at ``threshold`` of buildings matched at every threshold
    (:func:`_match_truth`): ``match`` (N,) TP / FP / ignored, ``scores`` (N,), ``truths`` the
    truth polygons the rules keep. What the page computes at its slider's threshold."""
    shown = scores >= threshold
    tp = int((shown & (match == "TP")).sum())
    return {"TP": tp, "FP": int((shown & (match == "FP")).sum()), "FN": truths - tp}


# With truth, each building's shape columns (the popup's): name -> polygon_metrics pair column,
# of a TP against the truth it matched (iou of an FP: its best overlap with any truth)
SHAPE_COLUMNS = {"iou": "iou", "ciou": "ciou", "polis_m": "polis", "mta_deg": "mta",
                 "vertices": "pred_vertices", "truth_vertices": "truth_vertices"}


VECTOR_TILE_MODES = ("auto", "always", "never")
# From this many buildings on, "auto" cuts vector tiles instead of one GeoJSON (BENCHMARKS.md:
# 20,000 buildings in one GeoJSON still drew in seconds, 200,000 did not).
AUTO_TILES_FROM = 20000


def check_site_folder(site: Path) -> None:
    """``site`` may be written: absent, empty, or a site this module wrote before (its
    data/meta.json, or its pages and only names a site has: one stopped part way), whose pages
    it overwrites and whose imagery and footprint folders it replaces. Any other folder (e.g.
    one holding the user's own ``imagery/``) is a ViewerInputError naming what it holds, and
    nothing in it is touched."""
    if not site.exists():
        return
    if not site.is_dir():
        raise ViewerInputError(f"--out {site} is a file; give a folder for the site")
    names = sorted(p.name for p in site.iterdir())
    started = "index.html" in names and set(names) <= SITE_NAMES  # the pages come first
    if names and not started and not (site / "data" / "meta.json").is_file():
        raise ViewerInputError(f"--out {site} exists and is not a site of tools/view.py (it holds "
                               f"{', '.join(names[:5])}{', ...' if len(names) > 5 else ''}); "
                               "give a new or empty folder")


def build_site(folder: str | Path, site: str | Path, city: str | None = None,
               scene_root: str | None = None, basemap: str | None = None,
               overview_px: int = 1024, truth: list[str] | None = None,
               vector_tiles: str = "auto") -> dict:
    """Write the site for prediction folder ``folder`` into ``site`` (module docstring);
    returns the summary written to ``data/meta.json``. ``truth``: SpaceNet truth CSVs or
    GeoJSON / GeoParquet files; buildings and truth then carry TP / FP / FN at the run's
    threshold, matched as tools/score.py matches (the SpaceNet rules, per scene).
    ``vector_tiles``: footprints as vector tiles (:mod:`.tiles`) "always", "never" (one
    GeoJSON) or "auto" (tiles from ``AUTO_TILES_FROM`` buildings on)."""
    if vector_tiles not in VECTOR_TILE_MODES:
        raise ViewerInputError(f"--vector-tiles {vector_tiles!r}: choose from "
                               f"{', '.join(VECTOR_TILE_MODES)}")
    folder, site = Path(folder), Path(site)
    run, manifest = read_run(folder)
    check_site_folder(site)
    vendor = vendor_dir()
    bands = _bands(run)
    frame, unreadable = _buildings(folder, city)  # bad input stops before anything is written
    site.mkdir(parents=True, exist_ok=True)
    for name in PAGE_FILES:
        shutil.copy2(STATIC / name, site / name)
    shutil.copytree(vendor, site / "vendor", dirs_exist_ok=True)
    # A city (vector tiles): one imagery mosaic (:mod:`.mosaic`), not an image per scene.
    tiled = vector_tiles == "always" or (vector_tiles == "auto" and len(frame) >= AUTO_TILES_FROM)
    for stale in ("imagery", "data/overview"):  # a rebuild's other kind
        shutil.rmtree(site / stale, ignore_errors=True)
    # each scene's outline, where its imagery cannot be read; where it holds data
    grids, regions = recorded_grids(folder)
    scenes, paths, sources, resolution = [], {}, {}, []
    for row in manifest.itertuples():
        if row.scene in unreadable:  # shown and counted as a failed scene, with the reason
            row = row._replace(status="failed", error=unreadable[row.scene], buildings=0)
        path = remap_scene(str(row.path), scene_root)
        paths[row.scene] = path
        corners = None
        if row.status in ("ok", "skipped"):
            found = _scene_image(path, bands, None if tiled else
                                 site / "imagery" / f"{row.scene}.png", overview_px)
            if found is not None:
                corners, sources[row.scene], metres_per_px = found
                resolution.append(metres_per_px)
                lons, lats = [c[0] for c in corners], [c[1] for c in corners]
                sources[row.scene]["bounds"] = [min(lons), min(lats), max(lons), max(lats)]
            elif grids.get(row.scene) and grids[row.scene][0] is not None:
                corners = _grid_corners(grids[row.scene])  # its outline, without imagery
        scenes.append({"scene": row.scene, "status": row.status, "error": row.error or "",
                       "buildings": int(row.buildings), "corners": corners,
                       "image": (f"imagery/{row.scene}.png"
                                 if row.scene in sources and not tiled else None)})
    overview = None
    if tiled and sources:
        lat = float(np.mean([s["bounds"][1] for s in sources.values()]))
        overview = {"url": "data/overview/{z}/{x}/{y}.png", **write_overview_pyramid(
            sources, site / "data" / "overview",
            max_zoom_for(float(np.median(resolution)), lat))}
    threshold = float(run.get("score_thresh", 0.5))
    columns = ["scene", "building_id", "score", "area_m2", "geometry"]
    counts = None
    (site / "data").mkdir(exist_ok=True)
    shape_summary = None
    if truth:
        matched, truth_frame, counts, shape_summary = _match_truth(
            frame, scenes, paths, truth, threshold, city=bool(city), grids=grids,
            regions=regions)
        frame = frame.assign(**matched)
        columns[4:4] = list(matched)
        # the page's counts at its slider's threshold: TP and FP scores, each sorted
        for kind in ("TP", "FP"):
            write_sorted_scores(frame["score"].to_numpy()[matched["match"] == kind],
                                site / "data" / f"{kind.lower()}_scores.f64")
    shown = frame[columns].assign(score=frame["score"].round(4),
                                  area_m2=frame["area_m2"].round(1))
    if truth:
        shown = shown.assign(**{name: frame[name].round(digits) for name, digits in
                                (("iou", 3), ("ciou", 3), ("polis_m", 2), ("mta_deg", 1))})
    for stale in ("footprints", "buildings.geojson", "scores.f64", "density.json",
                  "density_scores.f64", "truth", "truth.geojson", "misses.json",
                  "misses_scores.f64", *(() if truth else (
                      "tp_scores.f64", "fp_scores.f64"))):  # a rebuild's other kind
        target = site / "data" / stale
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    if tiled:
        footprints = {"kind": "tiles", "url": "data/footprints/{z}/{x}/{y}.pbf",
                      **write_vector_tiles(shown, site / "data" / "footprints",
                                           [c for c in columns if c != "geometry"])}
        write_sorted_scores(shown["score"].to_numpy(), site / "data" / "scores.f64")
        # zoomed out, where no building is drawn: buildings per km2 at the slider's threshold
        density = write_density(shown, site / "data", footprints["min_zoom"])
    else:
        density = None
        footprints = {"kind": "geojson", "url": "data/buildings.geojson"}
        with atomic_write(site / "data" / "buildings.geojson", "w") as handle:
            json.dump(json.loads(shown.to_json(drop_id=True)), handle, separators=(",", ":"))
    truth_footprints = misses = None
    if truth and tiled:  # a city's truth as its buildings: tiles, and its misses zoomed out
        truth_footprints = {"kind": "tiles", "url": "data/truth/{z}/{x}/{y}.pbf",
                            **write_vector_tiles(truth_frame, site / "data" / "truth",
                                                 ["scene", "match", "matched_score"],
                                                 layer="truth")}
        misses = write_density(truth_frame[truth_frame["match"] != "ignored"], site / "data",
                               footprints["min_zoom"], name="misses",
                               score_column="matched_score")
    elif truth:
        truth_footprints = {"kind": "geojson", "url": "data/truth.geojson"}
        with atomic_write(site / "data" / "truth.geojson", "w") as handle:
            handle.write(truth_frame.to_json(drop_id=True))
    points = [c for s in scenes if s["corners"] for c in s["corners"]]
    if len(frame):
        b = frame.total_bounds
        points += [[b[0], b[1]], [b[2], b[3]]]
    bounds = ([float(min(p[0] for p in points)), float(min(p[1] for p in points)),
               float(max(p[0] for p in points)), float(max(p[1] for p in points))]
              if points else None)
    meta = {"threshold": threshold, "buildings": int(len(frame)), "truth_counts": counts,
            "truth_kept": None if counts is None else counts["TP"] + counts["FN"],
            "truth_shape": shape_summary,
            "scores_at_or_above_threshold": int((frame["score"] >= threshold).sum())
            if len(frame) else 0,
            "bounds": bounds, "scenes": scenes, "basemap": basemap, "footprints": footprints,
            "overview": overview, "density": density, "truth_footprints": truth_footprints,
            "misses": misses,
            "empty_reason": None if len(frame) else
            ("the run found no buildings" if len(manifest) else "the run has no scenes")}
    with atomic_write(site / "data" / "meta.json", "w") as handle:
        json.dump(meta, handle, indent=1)
    # for the server's tiles only (local paths; a static host never reads it)
    with atomic_write(site / "data" / "sources.json", "w") as handle:
        json.dump(sources, handle, indent=1)
    logger.info("viewer for %s: %d buildings, %d scenes -> %s", folder, len(frame), len(scenes),
                site)
    return meta
