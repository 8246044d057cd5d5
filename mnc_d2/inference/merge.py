"""Merge the per-scene GeoParquet files of a prediction folder into one city-wide GeoParquet.

Neighbouring scenes abut or overlap, so a building on a seam is found once per scene that sees
it, whole or cut in pieces. Which polygons of *different* scenes are one building, and what
stands for it (the best-scoring whole one, or the union of the pieces with the seam's gap
bridged), is :mod:`.seams`' rule; buildings of the same scene are joined only through another
scene's. The scenes' footprints come from what each file records: its pixel grid, less the
nodata collar or gaps where the scene has some (the scene's own grid, through the folder's
manifest, for files written before predict.py recorded them).

Streaming, so memory does not grow with the city: scenes are visited in Hilbert order of their
footprints; a building that comes nowhere near another scene's footprint is written at once, the
others wait in a seam pool until every scene whose footprint they reach has been read, then
their groups are resolved and written. The pool holds the seam buildings along the frontier of
visited scenes (for a mosaic visited in Hilbert order: about the seams of a few neighbouring
scenes). Output rows are written scene by scene in Hilbert order and, inside each batch, sorted
by the Hilbert distance of their centroids; ``building_id`` is renumbered over the city and
``scenes`` lists the scene(s) each building came from; ``datetime`` and ``view_angle`` are kept
(a merged building keeps the values of the member whose row stands for it), and so is the file
metadata naming the run. Torch-free.
"""

from __future__ import annotations

import json
import logging
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import shapely

from ..utils.atomic import atomic_path
from .scenes import damaged_file_message, unreadable_reason

logger = logging.getLogger(__name__)

WGS84 = "EPSG:4326"  # the per-scene files' CRS
# Per-building provenance columns carried into the merged file (a unioned building keeps the
# values of its highest-scoring part).
PROVENANCE = ("datetime", "view_angle")


def _extent(metadata: dict) -> tuple[float, float, float, float] | None:
    """The buildings' bounding box a per-scene file's schema ``metadata`` records (None: no
    building)."""
    geo = json.loads(metadata[b"geo"])
    bbox = geo["columns"][geo["primary_column"]].get("bbox")
    return tuple(bbox) if bbox and all(np.isfinite(bbox)) else None


def _join_chunks(chunks: list[Path], dest: str | Path, bounds: list[float],
                 made_by: bytes | None = None) -> None:
    """Concatenate GeoParquet chunks into ``dest`` (atomic), one chunk in memory at a time; the
    file-level bbox of the geo metadata covers every chunk; ``made_by``: the per-scene files'
    ``mnc_d2`` metadata (the run that predicted them), kept."""
    import geopandas as gpd
    import pyarrow.parquet as pq

    with atomic_path(dest) as tmp:
        if not chunks:  # nothing at all: an empty but valid GeoParquet
            import pandas as pd

            gpd.GeoDataFrame({"building_id": np.zeros(0, np.int64), "scenes": [],
                              "score": np.zeros(0), "area_m2": np.zeros(0),
                              "datetime": pd.Series([], dtype="datetime64[us, UTC]"),
                              "view_angle": np.zeros(0)}, geometry=[],
                             crs="EPSG:4326").to_parquet(tmp, index=False)
            return
        schema = pq.read_schema(chunks[0])
        geo = json.loads(schema.metadata[b"geo"])
        geo["columns"][geo["primary_column"]]["bbox"] = [float(v) for v in bounds]
        schema = schema.with_metadata({**schema.metadata, b"geo": json.dumps(geo).encode(),
                                       **({b"mnc_d2": made_by} if made_by else {})})
        with pq.ParquetWriter(tmp, schema) as writer:
            for chunk in chunks:
                writer.write_table(pq.read_table(chunk).replace_schema_metadata(schema.metadata))


@lru_cache(maxsize=1)
def _wgs84():
    from pyproj import CRS

    return CRS.from_epsg(4326)


def read_scene_file(path: Path):
    """One per-scene GeoParquet as a GeoDataFrame in EPSG:4326. predict.py writes them in
    EPSG:4326 with WKB geometries: those are read with pyarrow and shapely and given one shared
    CRS object (geopandas parses each file's PROJJSON CRS anew, about 30 ms a file: minutes for a
    city of scenes); any other file through geopandas, reprojected."""
    import geopandas as gpd
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    geo = json.loads((table.schema.metadata or {}).get(b"geo", b"{}"))
    column = geo.get("primary_column", "geometry")
    spec = geo.get("columns", {}).get(column, {})
    if spec.get("encoding") != "WKB" or (spec.get("crs") or {}).get("id") != {
            "authority": "EPSG", "code": 4326}:
        return gpd.read_parquet(path).to_crs(WGS84)
    covering = (spec.get("covering") or {}).get("bbox", {}).get("xmin", [None])[0]
    rest = table.drop_columns([c for c in (column, covering) if c in table.column_names])
    return gpd.GeoDataFrame(rest.to_pandas(), crs=_wgs84(),
                            geometry=shapely.from_wkb(table[column].to_numpy(
                                zero_copy_only=False)))


def _scene_paths(folder: Path) -> dict:
    """Scene name -> its file as the folder's manifest names it ({} without a manifest)."""
    import pandas as pd

    manifest = Path(folder) / "manifest.parquet"
    if not manifest.is_file():
        return {}
    try:
        rows = pd.read_parquet(manifest, columns=["scene", "path"])
    except Exception as exc:  # noqa: BLE001 - the footprints fall back to the buildings' boxes
        logger.warning("%s cannot be read (%s): scenes without a recorded grid are not opened",
                       manifest, exc)
        return {}
    return dict(zip(rows["scene"].astype(str), rows["path"].astype(str)))


def scene_extents(folder: Path, files: list[Path], metas: list[dict],
                  boxes: list) -> tuple[list, list[str]]:
    """Each file's :class:`.seams.SceneExtent`: the grid its schema metadata (``metas``)
    records, else its scene's (opened through the manifest), else its buildings' bounding box
    (``boxes``) at the fallback pixel size; and the names of the scenes given that fallback."""
    import rasterio

    from .seams import FALLBACK_GSD_M, SceneExtent, grid_extent, recorded_extent

    paths, extents, guessed = None, [], []
    for path, meta, box in zip(files, metas, boxes):
        extent = recorded_extent(meta)
        if extent is None:
            paths = _scene_paths(folder) if paths is None else paths
            try:
                with rasterio.open(paths[path.stem]) as src:
                    extent = grid_extent(src.crs, src.transform, src.width, src.height)
            except Exception as exc:  # noqa: BLE001 - not in the manifest, moved, unreadable
                logger.debug("scene %s: no grid (%s)", path.stem, exc)
                extent = SceneExtent(shapely.box(*box), FALLBACK_GSD_M)
                guessed.append(path.stem)
        extents.append(extent)
    if guessed:
        logger.warning("%d scene(s) record no pixel grid and cannot be opened (e.g. %s): their "
                       "extent is their buildings' bounding box at %.2f m per pixel; predict.py "
                       "of this version records the grid", len(guessed), guessed[0],
                       FALLBACK_GSD_M)
    return extents, guessed


def _reach(extent, tolerance_px: float):
    """The footprint grown by the seam tolerance, in degrees: metres over 110 km times the
    cosine of the footprint's highest latitude, at most a degree's length in either direction,
    so at least the tolerance everywhere."""
    lat = min(max(abs(extent.footprint.bounds[1]), abs(extent.footprint.bounds[3])), 89.0)
    metres = tolerance_px * extent.gsd_m
    return shapely.buffer(shapely.envelope(extent.footprint),
                          metres / (110_000.0 * np.cos(np.radians(lat))), join_style="mitre")


def merge_footprints(folder: str | Path, dest: str | Path,
                     tolerance_px: float | None = None, min_overlap: float | None = None
                     ) -> dict:
    """Merge ``folder/buildings/*.parquet`` into the GeoParquet ``dest`` (module docstring);
    ``tolerance_px`` and ``min_overlap``: the seam rule's (:mod:`.seams`; None: its defaults).

    Returns counts: scenes, buildings read, buildings written, seam groups merged, and the
    scenes whose file cannot be read (``unreadable``: name -> reason), which are left out.
    """
    import geopandas as gpd
    import pandas as pd
    import pyarrow.parquet as pq

    from .seams import SEAM_MIN_OVERLAP, SEAM_TOLERANCE_PX

    tolerance_px = SEAM_TOLERANCE_PX if tolerance_px is None else float(tolerance_px)
    min_overlap = SEAM_MIN_OVERLAP if min_overlap is None else float(min_overlap)
    if not tolerance_px >= 0 or not 0 < min_overlap <= 1:
        raise ValueError(f"seam tolerance {tolerance_px} px and overlap {min_overlap}: use a "
                         "tolerance >= 0 and an overlap in (0, 1]")
    files = sorted((Path(folder) / "buildings").glob("*.parquet"))
    files = [f for f in files if not f.name.startswith(".")]
    if not files:
        raise FileNotFoundError(f"no per-scene GeoParquet under {Path(folder) / 'buildings'}; "
                                "run tools/predict.py --output there first")
    unreadable = {}  # a damaged file is left out (logged, returned); the others are merged
    for f in files:
        reason = unreadable_reason(f)
        if reason:
            unreadable[f.stem] = damaged_file_message(f, reason)
            logger.warning("%s: not merged", unreadable[f.stem])
    files = [f for f in files if f.stem not in unreadable]
    if not files:
        raise FileNotFoundError(f"none of the {len(unreadable)} per-scene GeoParquet files "
                                f"under {Path(folder) / 'buildings'} can be read (the first: "
                                f"{next(iter(unreadable.values()))})")
    metas = [pq.read_schema(f).metadata for f in files]  # each footer read once here
    boxes = [_extent(m) for m in metas]
    kept = [k for k, box in enumerate(boxes) if box is not None]  # scenes with buildings
    scenes = [files[k] for k in kept]
    empty_scenes = len(files) - len(scenes)
    extents, guessed = scene_extents(Path(folder), scenes, [metas[k] for k in kept],
                                     [boxes[k] for k in kept])
    outlines = gpd.GeoSeries([e.footprint for e in extents], crs="EPSG:4326")
    order = (np.argsort(outlines.hilbert_distance().to_numpy(), kind="stable") if len(outlines)
             else np.zeros(0, dtype=int))  # every scene empty: nothing to order
    scenes, extents = [scenes[i] for i in order], [extents[i] for i in order]
    box_arr = np.array([_reach(e, tolerance_px) for e in extents], dtype=object)
    tree = shapely.STRtree(box_arr)
    stats = {"scenes": len(files), "empty_scenes": empty_scenes, "read": 0, "written": 0,
             "merged_groups": 0, "unreadable": unreadable, "no_grid": guessed}
    seam_rule = {"extents": extents, "tolerance_px": tolerance_px, "min_overlap": min_overlap}
    pool = []  # seam buildings waiting: frames + "_last" (the last scene, in visiting order,
    # whose footprint they reach: a building is final once that scene has been read)
    next_id = 0
    bounds = [np.inf, np.inf, -np.inf, -np.inf]
    total = tuple(shapely.total_bounds(box_arr)) if len(box_arr) else None  # None: no scene
    # has a building, so nothing is ordered by it
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=Path(dest).parent) as chunk_dir:
        chunks: list[Path] = []

        def emit(frame) -> None:
            """Write one batch as its own GeoParquet chunk (joined into ``dest`` at the end)."""
            nonlocal next_id
            if frame.empty:
                return
            centres = gpd.GeoSeries(shapely.centroid(frame.geometry.to_numpy()))  # lon/lat: an
            # ordering key only, so the planar centroid of geographic coordinates is fine
            frame = frame.iloc[np.argsort(centres.hilbert_distance(total_bounds=total).to_numpy(),
                                          kind="stable")].reset_index(drop=True)
            frame["building_id"] = np.arange(next_id, next_id + len(frame), dtype=np.int64)
            next_id += len(frame)
            chunk = Path(chunk_dir) / f"{len(chunks):06d}.parquet"
            frame[["building_id", "scenes", "score", "area_m2", *PROVENANCE, "geometry"]].to_parquet(
                chunk, index=False, write_covering_bbox=True, schema_version="1.1.0")
            chunks.append(chunk)
            b = frame.total_bounds
            bounds[:2] = np.minimum(bounds[:2], b[:2])
            bounds[2:] = np.maximum(bounds[2:], b[2:])
            stats["written"] += len(frame)

        for k, path in enumerate(scenes):
            frame = read_scene_file(path)
            for column in PROVENANCE:  # files of mnc_d2 < 0.3 lack them
                if column not in frame:
                    frame[column] = (pd.Series(pd.NaT, index=frame.index,
                                               dtype="datetime64[us, UTC]")
                                     if column == "datetime" else np.nan)
            stats["read"] += len(frame)
            frame["scenes"] = frame["scene"].astype(str)
            frame["_scene"] = k
            others = np.array([j for j in tree.query(box_arr[k]).tolist() if j != k], dtype=int)
            last = np.full(len(frame), -1)
            if len(others):
                b, o = shapely.STRtree(box_arr[others]).query(frame.geometry.to_numpy(),
                                                              predicate="intersects")
                np.maximum.at(last, b, others[o])
            seam = last >= 0
            emit(frame[~seam])
            if seam.any():
                pool.append(frame[seam].assign(_last=last[seam]))
            # Readiness changes only when the last scene a waiting building touches is read.
            if any((waiting["_last"] == k).any() for waiting in pool):
                pool = _flush(pool, k, emit, stats, seam_rule, final=False)
        _flush(pool, len(scenes), emit, stats, seam_rule, final=True)
        _join_chunks(chunks, dest, bounds, metas[0].get(b"mnc_d2"))
    logger.info("merged %d scenes: %d buildings read, %d written (%d seam groups merged)",
                stats["scenes"], stats["read"], stats["written"], stats["merged_groups"])
    return stats


def _flush(pool: list, visited: int, emit, stats: dict, rule: dict, final: bool) -> list:
    """Resolve and emit the seam groups whose scenes have all been read (:mod:`.seams`; ``rule``:
    the scenes' extents, tolerance and overlap); returns the rest."""
    import pandas as pd

    from ..geometry.crs import local_utm_crs
    from .seams import reproject, seam_groups

    if not pool:
        return pool
    frame = pd.concat(pool, ignore_index=True)
    x0, y0, x1, y1 = shapely.total_bounds(frame.geometry.to_numpy())
    metric = local_utm_crs((x0 + x1) / 2, (y0 + y1) / 2)
    geoms = reproject(frame.geometry.to_numpy(), WGS84, metric)
    keys = frame["_scene"].to_numpy()
    extents = rule["extents"]
    present = sorted(set(keys.tolist()))
    outlines = np.array([extents[k].footprint for k in present], dtype=object)
    footprints = dict(zip(present, reproject(outlines, WGS84, metric)))
    tolerance = {k: rule["tolerance_px"] * extents[k].gsd_m for k in present}
    found = seam_groups(geoms, keys, footprints, tolerance, rule["min_overlap"])
    label = found.label
    ready_member = final | (frame["_last"].to_numpy() <= visited)
    ready_group = pd.Series(ready_member).groupby(label).transform("all").to_numpy()
    bridges: dict = {}
    for (i, _), bridge in zip(found.pairs.tolist(), found.bridges):
        bridges.setdefault(label[i], []).append(bridge)
    scores, names, whole = frame["score"].to_numpy(), frame["scenes"].to_numpy(), found.whole
    order = np.argsort(label, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(label[order])) + 1) if len(order) else []
    chosen, scenes, unions = [], [], {}  # unions: output row -> union of a group's pieces
    for members in groups:
        if not ready_group[members[0]]:
            continue
        if len(members) == 1:
            chosen.append(members[0])
            scenes.append(names[members[0]])
            continue
        seen_whole = members[whole[members]]
        pick = seen_whole if len(seen_whole) else members
        chosen.append(pick[int(np.argmax(scores[pick]))])
        scenes.append(",".join(sorted(set(",".join(names[members]).split(",")))))
        if not len(seen_whole):  # only pieces: their union, the gaps between them bridged
            unions[len(chosen) - 1] = shapely.union_all(
                [*geoms[members], *bridges.get(label[members[0]], [])])
        stats["merged_groups"] += 1
    if chosen:
        out = frame.iloc[chosen].reset_index(drop=True)
        out["scenes"] = scenes
        if unions:
            rows, shapes = list(unions), np.array(list(unions.values()), dtype=object)
            out.loc[rows, "area_m2"] = shapely.area(shapes)  # local UTM, as scenes.area_m2
            geometry = out.geometry.to_numpy().copy()
            geometry[rows] = reproject(shapes, metric, WGS84)
            out = out.set_geometry(geometry, crs=frame.crs)
        emit(out)
    rest = frame[~ready_group]
    return [rest] if len(rest) else []
