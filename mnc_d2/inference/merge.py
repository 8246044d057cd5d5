"""Merge the per-scene GeoParquet files of a prediction folder into one city-wide GeoParquet.

Neighbouring scenes of a mosaic overlap, so a building near a seam is found twice (once per
scene) or cut in two pieces. Buildings of *different* scenes that overlap (any intersection of
positive area) are unioned into one, keeping the higher score; buildings of the same scene are
never merged with each other. The grouping is the one used between tiles inside a scene
(:func:`.tiling.overlap_groups`), which there asks for more: an overlap above 30% of the
smaller polygon (``merge_overlap``).

Streaming, so memory does not grow with the city: scenes are visited in Hilbert order of their
extents; a building that touches no other scene's extent is written at once, the others wait in
a seam pool until every scene whose extent they touch has been read, then their overlapping
groups are unioned and written. The pool holds the seam buildings along the frontier of visited
scenes (for a mosaic visited in Hilbert order: about the seams of a few neighbouring scenes).
Output rows are written scene by scene in Hilbert order and, inside each batch, sorted by the
Hilbert distance of their centroids; ``building_id`` is renumbered over the city and ``scenes``
lists the scene(s) each building came from; ``datetime`` and ``view_angle`` are kept (a unioned
building keeps its best-scoring part's), and so is the file metadata naming the run. Torch-free.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import shapely

from ..utils.atomic import atomic_path
from .scenes import area_m2, damaged_file_message, unreadable_reason
from .tiling import overlap_groups

logger = logging.getLogger(__name__)

# Per-building provenance columns carried into the merged file (a unioned building keeps the
# values of its highest-scoring part).
PROVENANCE = ("datetime", "view_angle")


def _extent(path: Path) -> tuple[float, float, float, float] | None:
    import pyarrow.parquet as pq

    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
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


def merge_footprints(folder: str | Path, dest: str | Path) -> dict:
    """Merge ``folder/buildings/*.parquet`` into the GeoParquet ``dest`` (module docstring).

    Returns counts: scenes, buildings read, buildings written, seam groups merged, and the
    scenes whose file cannot be read (``unreadable``: name -> reason), which are left out.
    """
    import geopandas as gpd
    import pandas as pd
    import pyarrow.parquet as pq

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
    extents = [_extent(f) for f in files]
    scenes = [(f, e) for f, e in zip(files, extents) if e is not None]
    empty_scenes = len(files) - len(scenes)
    boxes = gpd.GeoSeries([shapely.box(*e) for _, e in scenes], crs="EPSG:4326")
    order = (np.argsort(boxes.hilbert_distance().to_numpy(), kind="stable") if len(boxes)
             else np.zeros(0, dtype=int))  # every scene empty: nothing to order
    scenes, boxes = [scenes[i] for i in order], boxes.iloc[order].reset_index(drop=True)
    box_arr = boxes.to_numpy()
    tree = shapely.STRtree(box_arr)
    stats = {"scenes": len(files), "empty_scenes": empty_scenes, "read": 0, "written": 0,
             "merged_groups": 0, "unreadable": unreadable}
    pool = []  # seam buildings waiting: frames + "_last" (the last scene, in visiting order,
    # whose extent they touch: a building is final once that scene has been read)
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

        for k, (path, _) in enumerate(scenes):
            frame = gpd.read_parquet(path)
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
                pool = _flush(pool, k, emit, stats, final=False)
        _flush(pool, len(scenes), emit, stats, final=True)
        _join_chunks(chunks, dest, bounds,
                     pq.read_schema(files[0]).metadata.get(b"mnc_d2") if files else None)
    logger.info("merged %d scenes: %d buildings read, %d written (%d seam groups unioned)",
                stats["scenes"], stats["read"], stats["written"], stats["merged_groups"])
    return stats


def _flush(pool: list, visited: int, emit, stats: dict, final: bool) -> list:
    """Union and emit the seam groups whose scenes have all been read; returns the rest."""
    import pandas as pd

    if not pool:
        return pool
    frame = pd.concat(pool, ignore_index=True)
    geoms = frame.geometry.to_numpy()
    label = overlap_groups(geoms, frame["_scene"].to_numpy())  # any positive overlap
    ready_member = final | (frame["_last"].to_numpy() <= visited)
    ready_group = pd.Series(ready_member).groupby(label).transform("all").to_numpy()
    done = frame[ready_group]
    pieces = []
    for _, members in done.groupby(label[ready_group], sort=False):
        if len(members) == 1:
            pieces.append(members)
            continue
        best = members.iloc[[int(np.argmax(members["score"].to_numpy()))]].copy()
        best["geometry"] = [shapely.union_all(members.geometry.to_numpy())]
        best["area_m2"] = np.nan  # recomputed below for the union
        best["scenes"] = ",".join(sorted(set(",".join(members["scenes"]).split(","))))
        pieces.append(best)
        stats["merged_groups"] += 1
    if pieces:
        out = pd.concat(pieces, ignore_index=True)
        _fill_area(out)
        emit(out)
    rest = frame[~ready_group]
    return [rest] if len(rest) else []


def _fill_area(frame) -> None:
    """area_m2 of unioned buildings, by the per-scene rule (:func:`.scenes.area_m2`)."""
    missing = frame["area_m2"].isna().to_numpy()
    if missing.any():
        frame.loc[missing, "area_m2"] = area_m2(frame[missing])
