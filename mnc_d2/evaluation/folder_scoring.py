"""Score a ``tools/predict.py`` output folder against truth in any form a mapping team has it.

Truth: SpaceNet truth CSVs (pixel coordinates, matched to scenes by ImageId) or map polygons in
any CRS (GeoJSON, GeoParquet, GeoPackage, shapefile: whatever geopandas reads; matched to the
scenes whose footprint holds their representative point: where the scene holds data, when
predict.py recorded it, else its grid). Each scene's buildings at or above
the run's threshold and its truth polygons are brought into the scene's pixel grid and scored
there by the SpaceNet rules (:func:`mnc_d2.evaluation.spacenet_metric.score`), as the tester
scores a tile, so a folder scores as its SpaceNet CSVs would. ``tools/score.py --predictions``
and the viewer's TP / FP / FN (``tools/view.py --truth``) both use :func:`scene_frames`.

A merged city (``tools/merge_footprints.py``; ``--city``) is scored instead as one image
(:func:`city_frame`): where scenes overlap, scene-by-scene scoring counts a seam building in each
scene that holds it, the city once.

Shapes (``--polygon-metrics``) are judged in metres: each matched pair is taken from the scene's
pixels to its CRS and then to ground metres (:func:`.polygon_metrics.to_metres`: the local UTM
zone for degrees and Mercator, feet converted), so no ``--gsd`` is needed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


class FolderInputError(ValueError):
    """A prediction folder or truth file that cannot be used: the message names the file and
    the fix."""


def read_run(folder: Path) -> tuple[dict, "object"]:
    """(run.json, the manifest's latest row of each scene) of a predict.py output folder."""
    import pandas as pd

    run_file, manifest_file = folder / "run.json", folder / "manifest.parquet"
    if not run_file.is_file() or not manifest_file.is_file():
        raise FolderInputError(f"{folder} is not a tools/predict.py output folder (no run.json "
                               "or manifest.parquet); pass the --output folder of predict.py")
    run = json.loads(run_file.read_text())
    manifest = pd.read_parquet(manifest_file)
    # the latest row of each scene (a re-run appends rows)
    manifest = manifest.groupby("scene", sort=False).tail(1).reset_index(drop=True)
    return run, manifest


def read_scene_buildings(folder: Path):
    """Every scene's buildings of a predict.py output folder, one GeoDataFrame in EPSG:4326,
    and the scenes whose file cannot be read (scene name -> reason, each logged): those are
    left out like a failed scene, so the good scenes are still scored and shown."""
    import geopandas as gpd
    import pandas as pd

    from ..inference.scenes import damaged_file_message

    files = sorted(p for p in (folder / "buildings").glob("*.parquet")
                   if not p.name.startswith("."))
    frames, unreadable = [], {}
    for path in files:
        try:
            frame = gpd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - a damaged file (e.g. an interrupted copy)
            unreadable[path.stem] = damaged_file_message(path, f"{type(exc).__name__}: {exc}")
            logger.warning("%s: left out of the scoring", unreadable[path.stem])
            continue
        if frame.crs is None:
            raise FolderInputError(f"{path} has no CRS; it was not written by tools/predict.py "
                                   "(re-run predict.py on its scene)")
        frames.append(frame.to_crs("EPSG:4326"))
    if not frames:
        return gpd.GeoDataFrame({"scene": [], "building_id": [], "score": [], "area_m2": []},
                                geometry=[], crs="EPSG:4326"), unreadable
    return pd.concat(frames, ignore_index=True), unreadable


def read_truth(paths: list[str]):
    """Truth polygons: SpaceNet CSVs (pixel coordinates, by ImageId) -> ("pixel", DataFrame);
    map files (GeoJSON, GeoParquet, GeoPackage, ...) -> ("map", GeoDataFrame in EPSG:4326)."""
    import geopandas as gpd
    import pandas as pd

    from ..formats.spacenet_csv import read_truth_csv

    kinds = {Path(p).suffix.lower() for p in paths}
    if kinds == {".csv"}:
        return "pixel", pd.concat([read_truth_csv(p) for p in paths], ignore_index=True)
    if ".csv" in kinds:
        raise FolderInputError(f"--truth {' '.join(map(str, paths))}: give SpaceNet CSVs or map "
                               "files (GeoJSON, GeoParquet, GeoPackage), not both")
    frames = []
    for p in paths:
        p = str(p)
        frame = gpd.read_parquet(p) if p.lower().endswith(".parquet") else gpd.read_file(p)
        if frame.crs is None:
            raise FolderInputError(f"{p} has no CRS; truth in map coordinates needs one "
                                   "(GeoDataFrame.set_crs), or give a SpaceNet CSV")
        frames.append(frame.to_crs("EPSG:4326")[["geometry"]])
    return "map", pd.concat(frames, ignore_index=True)


def remap_scene(path: str, scene_root: str | None) -> str:
    """A manifest's scene path, or the file of the same name in ``scene_root`` when the scenes
    moved: local paths, and URLs whose query string the manifest left out (a signed URL's
    token: not readable as recorded, so a local copy is what can be read); other URLs stay as
    they are."""
    from ..inference.sources import REDACTED_QUERY

    if scene_root is None or ("://" in path and REDACTED_QUERY not in path):
        return path
    return str(Path(scene_root) / Path(path.split("?", 1)[0]).name)


@dataclass
class SceneFrames:
    """One scene's buildings and truth in its pixel grid, ready for the SpaceNet scorer.

    rows: (P,) indices of the scene's buildings (at or above the threshold) in the buildings
    frame; proposals: P rows (ImageId, geometry, Confidence); truth: T rows (ImageId, geometry,
    BuildingId); crs, transform: the scene's grid (pixel -> map)."""

    scene: str
    image_id: str
    crs: object
    transform: object
    rows: np.ndarray
    proposals: "object"
    truth: "object"


def recorded_grids(folder: Path) -> tuple[dict, dict]:
    """What the GeoParquet files of predict.py output ``folder`` record of their scenes, each
    footer read once: scene name -> (crs, transform, width, height) of each scene whose file
    records its pixel grid (folders written before predict.py recorded it: none, and the scenes
    are opened instead), and scene name -> where the scene holds data (a polygon in its grid's
    CRS) of each that records one (predict.py does for a scene with pixels outside its data:
    an orthorectified scene's nodata collar, a mosaic's gaps)."""
    import pyarrow.parquet as pq
    from rasterio.crs import CRS

    from ..inference.scenes import recorded_data_region, recorded_grid

    grids, regions = {}, {}
    for path in sorted(Path(folder).glob("buildings/*.parquet")):
        try:
            meta = pq.read_schema(path).metadata
            grid = recorded_grid(meta)
            if grid is not None:
                crs, transform, width, height = grid
                grids[path.stem] = (CRS.from_wkt(crs) if crs else None, transform, width,
                                    height)
            region = recorded_data_region(meta)
            if region is not None:
                regions[path.stem] = region
        except Exception as exc:  # noqa: BLE001 - a damaged file: read_scene_buildings says so
            logger.debug("%s: no recorded grid (%s)", path, exc)
    return grids, regions


def _footprint(grid: tuple, region=None):
    """Where a scene's truth is scored, in its CRS: where it holds data (``region``, from
    :func:`recorded_grids`), else its whole grid (``grid``: :func:`scene_grid`'s)."""
    import shapely

    from ..geometry.polygons import pixel_to_map

    if region is not None:
        return region
    _, transform, width, height, _ = grid
    return pixel_to_map(shapely.box(0, 0, width, height), transform)


def _near(tree, footprint, crs) -> np.ndarray:
    """Indices (ascending) of the EPSG:4326 outlines in ``tree`` (a shapely STRtree) whose
    bounding boxes meet the EPSG:4326 bounds of ``footprint`` (a polygon in ``crs``), widened by
    a hundredth of their size: every outline that can hold a point of the footprint, whose
    exact test the caller makes in ``crs``. The bounds follow the footprint's edges, densified,
    through the reprojection (rasterio's ``transform_bounds``)."""
    import shapely
    from rasterio.warp import transform_bounds

    west, south, east, north = transform_bounds(crs, "EPSG:4326", *footprint.bounds,
                                                densify_pts=21)
    pad_x, pad_y = (east - west) / 100 + 1e-9, (north - south) / 100 + 1e-9
    box = shapely.box(west - pad_x, south - pad_y, east + pad_x, north + pad_y)
    return np.sort(tree.query(box))


def scene_grid(path: str, recorded: tuple | None = None):
    """(crs, transform, width, height, ImageId as predict.py's CSVs name it) of a scene:
    ``recorded`` (of :func:`recorded_grids`) when given, else read from the scene; None (logged)
    when it cannot be read."""
    import rasterio

    from ..inference.sources import scene_image_id

    if recorded is not None:
        return (*recorded, scene_image_id(path))
    try:
        with rasterio.open(path) as src:
            return src.crs, src.transform, src.width, src.height, scene_image_id(path)
    except Exception as exc:  # unreadable: its buildings and truth are left out
        logger.warning("scene %s cannot be read (%s): it is left out of the scoring", path, exc)
        return None


def scene_frames(buildings, scene_paths: dict, truth, threshold: float,
                 grids: dict | None = None, regions: dict | None = None) -> list[SceneFrames]:
    """Each readable scene's buildings (``buildings``: EPSG:4326, ``scene`` and ``score``
    columns) at or above ``threshold`` and its truth (``truth``: what :func:`read_truth`
    returns), in the scene's pixel grid; ``scene_paths``: scene name -> its GeoTIFF; ``grids``:
    the grids the folder records (:func:`recorded_grids`), used instead of opening a scene.
    With map truth the ImageId is the scene's name (unique in a folder), with SpaceNet CSVs
    the image's, and a scene's truth is the map's polygons whose representative point lies where
    the scene holds data (``regions``, also of :func:`recorded_grids`; else in its grid): a building
    under a nodata collar is no miss of a model that was shown no imagery there."""
    import geopandas as gpd
    import pandas as pd
    import shapely

    from ..geometry.polygons import map_to_pixel

    kind, table = truth
    # each scene's buildings at or above the threshold, found once (not a pass over every
    # building per scene)
    kept = np.flatnonzero(buildings["score"].to_numpy() >= threshold)
    by_scene = pd.Series(kept).groupby(buildings["scene"].astype(str).to_numpy()[kept]).indices
    by_scene = {name: kept[idx] for name, idx in by_scene.items()}
    # map truth: an index of its outlines, so a scene reprojects only those near it
    tree = shapely.STRtree(table.geometry.to_numpy()) if kind == "map" else None
    out = []
    for scene, path in scene_paths.items():
        grid = scene_grid(path, (grids or {}).get(scene))
        if grid is None:
            continue
        crs, transform, width, height, image_id = grid
        image_id = image_id if kind == "pixel" else str(scene)
        rows = by_scene.get(str(scene), np.zeros(0, dtype=np.int64))
        local = gpd.GeoSeries(buildings.geometry.iloc[rows].to_numpy(),
                              crs="EPSG:4326").to_crs(crs)
        proposals = pd.DataFrame({"ImageId": image_id,
                                  "geometry": [map_to_pixel(g, transform) for g in local],
                                  "Confidence": buildings["score"].to_numpy()[rows]})
        if kind == "pixel":
            mine = table[table["ImageId"] == image_id].reset_index(drop=True)
        else:
            footprint = _footprint(grid, (regions or {}).get(scene))
            near = _near(tree, footprint, crs)
            in_crs = gpd.GeoSeries(table.geometry.to_numpy()[near], crs="EPSG:4326").to_crs(crs)
            inside = in_crs[in_crs.representative_point().within(footprint)]
            mine = pd.DataFrame({"ImageId": image_id,
                                 "geometry": [map_to_pixel(g, transform) for g in inside]})
        mine = mine[~shapely.is_empty(mine.geometry.to_numpy())].reset_index(drop=True)
        mine = mine.assign(BuildingId=np.arange(len(mine)))
        out.append(SceneFrames(str(scene), str(image_id), crs, transform, rows, proposals, mine))
    return out


def folder_group_by(group_by: str, truth_kind: str, scene_paths: list[str]) -> str:
    """The groups whose F1s a folder's score averages (``score.py --group-by``). ``auto``: the
    SpaceNet release's (cities, or SpaceNet 4's nadir segments, as for a proposal CSV) when the
    truth is SpaceNet CSVs and every scene's file name carries a release's ImageId (e.g.
    ``RGB-PanSharpen_AOI_2_Vegas_img1.tif``), so a folder of SpaceNet 2 tiles gets the mean city
    F1 the tester reports; otherwise one group (``none``). ``city`` / ``nadir`` need such
    scenes (a FolderInputError otherwise)."""
    from ..data.versions import image_id_of
    from ..inference.sources import without_query

    spacenet = truth_kind == "pixel" and bool(scene_paths) and all(
        image_id_of(without_query(p)) for p in scene_paths)
    if group_by == "auto":
        return "auto" if spacenet else "none"
    if group_by != "none" and not spacenet:
        raise FolderInputError(
            f"--group-by {group_by} needs SpaceNet truth CSVs and scenes whose file names carry "
            "SpaceNet ImageIds (e.g. RGB-PanSharpen_AOI_2_Vegas_img1.tif), which name the "
            "groups; score these scenes as one group (--group-by none)")
    return group_by


def score_folder(folder, truth_paths: list[str], rules: str = "spacenet",
                 iou_threshold: float = 0.5, scene_root: str | None = None,
                 polygon_metrics: bool = False, tolerance: float = 1.0,
                 group_by: str = "auto"):
    """Score the scenes of predict.py output ``folder`` that did not fail against
    ``truth_paths`` at the run's threshold (one image per scene; groups by
    :func:`folder_group_by`). Returns (ScoreResult, the shape summary of
    :func:`.polygon_metrics.summarize` or None)."""
    import pandas as pd

    from .spacenet_metric import score

    folder = Path(folder)
    run, manifest = read_run(folder)
    threshold = float(run.get("score_thresh", 0.5))
    buildings, unreadable = read_scene_buildings(folder)
    paths = {name: path for name, path in _readable_scenes(manifest, scene_root).items()
             if name not in unreadable}
    truth_kind, truth_table = read_truth(truth_paths)
    scenes = scene_frames(buildings, paths, (truth_kind, truth_table), threshold,
                          *recorded_grids(folder))
    if not scenes:
        raise FolderInputError(f"{folder}: no scene could be read to score (the manifest's "
                               "paths moved? pass --scene-root)")
    truth = pd.concat([s.truth for s in scenes], ignore_index=True)
    proposals = pd.concat([s.proposals for s in scenes], ignore_index=True)
    if not len(truth):
        logger.warning("no truth polygon lies in the %d scene(s) of %s: every building counts "
                       "as a false positive (truth in another place or CRS?)", len(scenes),
                       folder)
    grouping = folder_group_by(group_by, truth_kind, [paths[s.scene] for s in scenes])
    result = score(truth, proposals, rules=rules, iou_threshold=iou_threshold,
                   group_by=grouping, images=[s.image_id for s in scenes])
    if not polygon_metrics:
        return result, None
    from .polygon_metrics import matched_pair_metrics, summarize

    metric_truth = pd.concat([_in_metres(s, s.truth) for s in scenes], ignore_index=True)
    metric_props = pd.concat([_in_metres(s, s.proposals) for s in scenes], ignore_index=True)
    frame, groups = matched_pair_metrics(result, metric_truth, metric_props,
                                         metres_per_unit=1.0, tolerance=tolerance)
    return result, summarize(frame, groups)


def frame_pair_metrics(one: SceneFrames, result, city: bool = False, tolerance: float = 1.0):
    """Shape metrics (:data:`.polygon_metrics.PAIR_COLUMNS`, ground metres) of the pairs that
    ``result``, the SpaceNet score of ``one`` alone, matched: one row per matched proposal, in
    proposal order, and the score's group of each. ``city``: ``one`` is :func:`city_frame`'s
    (its pixels are a scale of the local UTM zone), else a scene of :func:`scene_frames`."""
    from .polygon_metrics import matched_pair_metrics

    if city:
        return matched_pair_metrics(result, one.truth, one.proposals,
                                    metres_per_unit=one.transform.a, tolerance=tolerance)
    return matched_pair_metrics(result, _in_metres(one, one.truth),
                                _in_metres(one, one.proposals), metres_per_unit=1.0,
                                tolerance=tolerance)


def _in_metres(scene: SceneFrames, table):
    """``table`` with its pixel geometries in ground metres (scene's CRS, then
    :func:`.polygon_metrics.to_metres`)."""
    from ..geometry.polygons import pixel_to_map
    from .polygon_metrics import to_metres

    geoms = [pixel_to_map(g, scene.transform) for g in table.geometry]
    return table.assign(geometry=list(to_metres(geoms, scene.crs)) if geoms else [])


def city_frame(buildings, scene_paths: dict, truth, threshold: float,
               grids: dict | None = None, regions: dict | None = None) -> SceneFrames:
    """A merged city's buildings (``buildings``: tools/merge_footprints.py's GeoParquet, any
    CRS, ``score`` column) at or above ``threshold`` and the map truth inside the readable
    scenes of ``scene_paths`` (scene name -> GeoTIFF), as ONE image for the SpaceNet scorer:
    coordinates in the local UTM zone divided by the scenes' median ground sample distance (the
    frame's ``transform`` scales them back), so the scorer's area rule (polygons under 20 px
    ignored) keeps its meaning. A building the merge unioned across a seam is one proposal, not
    one per scene as when each scene is scored alone. ``grids``, ``regions``: as
    :func:`scene_frames`'s (the truth is the map's inside the scenes' data)."""
    import geopandas as gpd
    import pandas as pd
    import shapely
    from affine import Affine

    from ..geometry.crs import utm_crs_of
    from ..geometry.polygons import pixel_to_map

    kind, table = truth
    if kind == "pixel":
        raise FolderInputError("SpaceNet CSV truth is in each image's pixels: score the city "
                               "with map truth (GeoJSON, GeoParquet, GeoPackage), or the "
                               "per-scene files without --city")
    footprints, pixels, data = [], [], []
    for scene, path in scene_paths.items():
        grid = scene_grid(path, (grids or {}).get(scene))
        if grid is None:
            continue
        crs, transform, width, height, _ = grid
        footprint = pixel_to_map(shapely.box(0, 0, width, height), transform)
        footprints.append(gpd.GeoSeries([footprint], crs=crs).to_crs(4326)[0])
        region = (regions or {}).get(scene)  # where it holds data, when recorded
        data.append(footprints[-1] if region is None else
                    gpd.GeoSeries([region], crs=crs).to_crs(4326)[0])
        pixels.append(width * height)
    if not footprints:
        raise FolderInputError("no scene of the run could be read to bound the city (the "
                               "manifest's paths moved? pass --scene-root)")
    area = gpd.GeoSeries(footprints, crs=4326)
    utm = utm_crs_of(area)
    in_utm = area.to_crs(utm)
    gsd = float(np.median(np.sqrt(in_utm.area.to_numpy() / np.asarray(pixels, float))))
    covered = shapely.union_all(gpd.GeoSeries(data, crs=4326).to_crs(utm).to_numpy())
    rows = np.flatnonzero(buildings["score"].to_numpy() >= threshold)
    truth_utm = gpd.GeoSeries(table.geometry.to_numpy(), crs=4326).to_crs(utm)
    truth_utm = truth_utm[truth_utm.representative_point().within(covered)]

    def units(geoms):
        return list(shapely.transform(np.asarray(geoms, dtype=object), lambda xy: xy / gsd))

    proposals = pd.DataFrame({"ImageId": "city",
                              "geometry": units(buildings.geometry.iloc[rows].to_crs(utm)),
                              "Confidence": buildings["score"].to_numpy()[rows]})
    mine = pd.DataFrame({"ImageId": "city", "geometry": units(truth_utm.to_numpy())})
    mine = mine[~shapely.is_empty(mine.geometry.to_numpy())].reset_index(drop=True)
    return SceneFrames("city", "city", utm, Affine.scale(gsd), rows, proposals,
                       mine.assign(BuildingId=np.arange(len(mine))))


def _readable_scenes(manifest, scene_root: str | None) -> dict:
    """Scene name -> path of the manifest's scenes that did not fail (the others logged)."""
    paths = {}
    for row in manifest.itertuples():
        if row.status not in ("ok", "skipped"):
            logger.warning("scene %s %s in this run: left out of the scoring (%s)", row.scene,
                           row.status, row.error)
            continue
        paths[row.scene] = remap_scene(str(row.path), scene_root)
    return paths


def read_city(city):
    """A merged city GeoParquet (tools/merge_footprints.py) in EPSG:4326, its ``scenes`` column
    as ``scene``; a file that cannot be read or has no CRS is a FolderInputError naming it."""
    import geopandas as gpd

    try:
        frame = gpd.read_parquet(city)
    except Exception as exc:  # noqa: BLE001 - not (or no longer) a GeoParquet
        raise FolderInputError(f"--city {city} cannot be read as GeoParquet ({exc}); write it "
                               "with tools/merge_footprints.py") from None
    if frame.crs is None:
        raise FolderInputError(f"{city} has no CRS; write it with tools/merge_footprints.py "
                               "(EPSG:4326) or set one (GeoDataFrame.set_crs)")
    return frame.rename(columns={"scenes": "scene"}).to_crs("EPSG:4326")


def score_city(folder, city, truth_paths: list[str], rules: str = "spacenet",
               iou_threshold: float = 0.5, scene_root: str | None = None,
               polygon_metrics: bool = False, tolerance: float = 1.0):
    """:func:`score_folder` for the merged city GeoParquet ``city`` of ``folder``
    (:func:`city_frame`): one image, at the run's threshold. Returns (ScoreResult, shape
    summary or None)."""
    from .spacenet_metric import score

    folder = Path(folder)
    run, manifest = read_run(folder)
    buildings = read_city(city)
    one = city_frame(buildings, _readable_scenes(manifest, scene_root), read_truth(truth_paths),
                     float(run.get("score_thresh", 0.5)), *recorded_grids(folder))
    if not len(one.truth):
        logger.warning("no truth polygon lies in the scenes of %s: every building counts as a "
                       "false positive (truth in another place?)", folder)
    result = score(one.truth, one.proposals, rules=rules, iou_threshold=iou_threshold,
                   group_by="none", images=["city"])
    if not polygon_metrics:
        return result, None
    from .polygon_metrics import summarize

    frame, groups = frame_pair_metrics(one, result, city=True, tolerance=tolerance)
    return result, summarize(frame, groups)
