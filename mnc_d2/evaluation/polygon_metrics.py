"""Polygon shape metrics on matched (prediction, truth) pairs: how mappers judge footprints
beyond the IoU that decides a SpaceNet match. Torch-free; vectorised over pairs with shapely 2.

Every metric is computed on the pairs the SpaceNet scorer matched (same rules and IoU threshold
as its F1), with coordinates in metres (:func:`to_metres`: pixels times the ground sample
distance, or map coordinates reprojected to the local UTM zone when the CRS is in degrees).
Vertices are counted after dropping repeated and exactly collinear points (``simplify(0)``),
without the closing point of each ring. Per pair:

``iou``
    area(P n T) / area(P u T).
``ciou``
    Complexity-aware IoU (Zorzi et al., PolyWorld, CVPR 2022, as in the CrowdAI mapping
    benchmark): ``iou * (1 - |N_P - N_T| / (N_P + N_T))``, N = vertex counts.
``vertex_error``
    Corner-count error ``|N_P - N_T|``.
``polis``
    PoLiS distance (Avbelj et al., IEEE TGRS 2015), metres: half the mean distance of P's
    vertices to T's boundary plus half the mean distance of T's vertices to P's boundary.
``mta``
    Max tangent angle error (after Girard et al., CVPR 2021), degrees in [0, 90]: for every edge
    of T's exterior, the orientation difference (modulo 180 degrees) to the edge of P's exterior
    nearest to its midpoint, and the same from P's edges to T's; the maximum. Approximation,
    named: Girard et al. sample points along T's contour and project them on P's; near a corner
    such a projection can land on the perpendicular edge (80 degrees for a square turned by 10),
    which edge midpoints avoid.
``boundary_f``
    Boundary F-score at ``tolerance`` metres (the contour accuracy of Martin et al. 2004 and the
    DAVIS benchmark, in its continuous form): precision = the share of P's boundary length (holes
    included) within the tolerance of T's boundary, recall = the same for T's boundary; their
    harmonic mean. (Those benchmarks count boundary pixels; lengths are the limit of that.)
``truth_holes``, ``holes_found``
    T's interior rings, and how many of them a hole of P overlaps with IoU >= 0.5.

:func:`summarize` gives, per group: mean IoU, C-IoU, PoLiS, MTA, boundary F, the mean vertex
error, the N-ratio (sum N_P / sum N_T, PolyWorld's) and the hole recall (holes found / truth
holes; NaN without truth holes).

Bad input: an invalid polygon is repaired with ``make_valid`` (its largest polygon kept), an
empty one gives a row of NaN (counted in ``pairs_skipped``).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import shapely

logger = logging.getLogger(__name__)

PAIR_COLUMNS = ("iou", "ciou", "vertex_error", "polis", "mta", "boundary_f", "pred_vertices",
                "truth_vertices", "truth_holes", "holes_found")
# The metrics :func:`summarize` gives per group (besides the pair and truth-hole counts).
SUMMARY_KEYS = ("iou", "ciou", "n_ratio", "polis", "mta", "vertex_error", "boundary_f",
                "hole_recall")


def to_metres(geoms, crs=None, metres_per_unit: float | None = None) -> np.ndarray:
    """Geometries in metres: scaled by ``metres_per_unit`` (pixel polygons: the ground sample
    distance), or from ``crs``: reprojected to the local UTM zone when it is geographic or
    Mercator (whose metres are stretched by 1 / cos(latitude): 1.31 at 40 degrees), scaled
    when its units are not metres (feet)."""
    geoms = np.asarray(geoms, dtype=object)
    if metres_per_unit is not None:
        if not 0.0 < float(metres_per_unit) < np.inf:  # NaN fails too
            raise ValueError(f"metres per pixel (--gsd) {metres_per_unit}: use the imagery's "
                             "positive ground sample distance (SpaceNet 2: 0.3)")
        return shapely.transform(geoms, lambda xy: xy * float(metres_per_unit))
    if crs is None:
        raise ValueError("to_metres needs a CRS or metres_per_unit (for pixel polygons: the "
                         "ground sample distance, e.g. 0.3 for SpaceNet 2's pan-sharpened tiles)")
    import geopandas as gpd

    from ..geometry.crs import metre_units, needs_utm, utm_crs_of

    series = gpd.GeoSeries(geoms, crs=crs)
    if needs_utm(series.crs):
        series = series.to_crs(utm_crs_of(series))
    elif series.crs.axis_info and not metre_units(series.crs):
        factor = series.crs.axis_info[0].unit_conversion_factor
        return shapely.transform(np.asarray(series.values, dtype=object), lambda xy: xy * factor)
    return np.asarray(series.values, dtype=object)


def clean_polygons(geoms) -> np.ndarray:
    """Each geometry as one valid Polygon (largest part of a repaired or multi-part geometry),
    repeated and collinear points dropped; None where nothing of positive area is left."""
    geoms = np.asarray(geoms, dtype=object)
    geoms = np.where(shapely.is_valid(geoms) | shapely.is_missing(geoms), geoms,
                     shapely.make_valid(geoms))
    simple = shapely.get_type_id(geoms) == 3  # Polygon
    for i in np.flatnonzero(~simple & ~shapely.is_missing(geoms)):
        parts = [p for p in shapely.get_parts(geoms[i]) if p.geom_type == "Polygon"]
        geoms[i] = max(parts, key=lambda p: p.area) if parts else None
    geoms = shapely.simplify(geoms, 0.0)
    ok = ~shapely.is_missing(geoms) & (shapely.area(geoms) > 0)
    return np.where(ok, geoms, None)


def vertex_counts(polys: np.ndarray) -> np.ndarray:
    """(N,) vertices per polygon, closing points excluded (rings have first == last)."""
    rings = 1 + shapely.get_num_interior_rings(polys)
    return shapely.get_num_coordinates(polys) - rings


def _ring_points(polys: np.ndarray):
    """Vertices of every ring without the closing point: (coords (K, 2), pair index (K,))."""
    rings, owner = shapely.get_rings(polys, return_index=True)
    coords, ring_idx = shapely.get_coordinates(rings, return_index=True)
    last = np.r_[ring_idx[1:] != ring_idx[:-1], True]
    return coords[~last], owner[ring_idx[~last]]


def _mean_by(values: np.ndarray, index: np.ndarray, n: int) -> np.ndarray:
    total = np.bincount(index, weights=values, minlength=n)
    count = np.bincount(index, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


def polis(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(N,) PoLiS distances of polygon pairs (units of the coordinates)."""
    n = len(pred)
    p_xy, p_idx = _ring_points(pred)
    t_xy, t_idx = _ring_points(truth)
    p_to_t = shapely.distance(shapely.points(p_xy), shapely.boundary(truth[p_idx]))
    t_to_p = shapely.distance(shapely.points(t_xy), shapely.boundary(pred[t_idx]))
    return 0.5 * _mean_by(p_to_t, p_idx, n) + 0.5 * _mean_by(t_to_p, t_idx, n)


def _edges(polys: np.ndarray):
    """Edges of the exterior rings: (starts (E, 2), ends (E, 2), pair index (E,))."""
    coords, idx = shapely.get_coordinates(shapely.get_exterior_ring(polys), return_index=True)
    same = idx[1:] == idx[:-1]
    start, end, owner = coords[:-1][same], coords[1:][same], idx[:-1][same]
    keep = np.any(start != end, axis=1)
    return start[keep], end[keep], owner[keep]


def _point_segment_distance(p, a, b) -> np.ndarray:
    ab, ap = b - a, p - a
    t = np.clip(np.einsum("ij,ij->i", ap, ab) / np.einsum("ij,ij->i", ab, ab), 0.0, 1.0)
    return np.hypot(*(ap - t[:, None] * ab).T)


def _angle_to_nearest_edge(src, dst, n: int) -> np.ndarray:
    """(n,) per pair: the largest orientation difference (degrees) between an edge of ``src`` and
    the edge of ``dst`` (same pair) nearest to its midpoint. ``src``/``dst``: :func:`_edges`."""
    s_a, s_b, s_own = src
    d_a, d_b, d_own = dst
    d_count = np.bincount(d_own, minlength=n)
    d_start = np.cumsum(d_count) - d_count
    reps = d_count[s_own]
    s_rep = np.repeat(np.arange(len(s_own)), reps)  # every (src edge, dst edge) of a pair
    d_rep = d_start[s_own][s_rep] + np.arange(len(s_rep)) - np.repeat(np.cumsum(reps) - reps, reps)
    mid = 0.5 * (s_a + s_b)
    dist = _point_segment_distance(mid[s_rep], d_a[d_rep], d_b[d_rep])
    order = np.lexsort((dist, s_rep))
    first = order[np.r_[True, s_rep[order][1:] != s_rep[order][:-1]]]  # nearest per src edge
    s_dir, d_dir = s_b - s_a, d_b - d_a
    s_ang = np.arctan2(s_dir[s_rep[first], 1], s_dir[s_rep[first], 0])
    d_ang = np.arctan2(d_dir[d_rep[first], 1], d_dir[d_rep[first], 0])
    diff = np.abs(s_ang - d_ang) % np.pi
    diff = np.degrees(np.minimum(diff, np.pi - diff))
    out = np.full(n, np.nan)
    np.fmax.at(out, s_own[s_rep[first]], diff)
    return out


def max_tangent_angle_error(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(N,) MTA in degrees (see the module docstring)."""
    n = len(pred)
    p_edges, t_edges = _edges(pred), _edges(truth)
    return np.fmax(_angle_to_nearest_edge(t_edges, p_edges, n),
                   _angle_to_nearest_edge(p_edges, t_edges, n))


def boundary_f(pred: np.ndarray, truth: np.ndarray, tolerance: float) -> np.ndarray:
    """(N,) boundary F-score at ``tolerance`` (see the module docstring)."""
    p_line, t_line = shapely.boundary(pred), shapely.boundary(truth)

    def share_within(line, other):
        near = shapely.buffer(other, tolerance, quad_segs=4)
        return shapely.length(shapely.intersection(line, near)) / shapely.length(line)

    precision, recall = share_within(p_line, t_line), share_within(t_line, p_line)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(precision + recall > 0,
                        2 * precision * recall / (precision + recall), 0.0)


def holes_found(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5):
    """(truth holes (N,), of them overlapped by a hole of the prediction with IoU >= ``iou``)."""
    n = len(pred)
    t_count = shapely.get_num_interior_rings(truth)
    found = np.zeros(n, dtype=int)
    for i in np.flatnonzero(t_count > 0):
        p_holes = [shapely.Polygon(r) for r in pred[i].interiors]
        for ring in truth[i].interiors:
            hole = shapely.Polygon(ring)
            if any(shapely.area(shapely.intersection(hole, h))
                   >= iou * shapely.area(shapely.union(hole, h)) for h in p_holes):
                found[i] += 1
    return t_count, found


def pair_metrics(pred, truth, tolerance: float = 1.0) -> pd.DataFrame:
    """Shape metrics of matched pairs (``pred[i]`` matched ``truth[i]``), coordinates in metres.

    Returns one row per pair with :data:`PAIR_COLUMNS` (NaN where a polygon is empty).
    ``tolerance``: the boundary F-score's distance in metres, > 0."""
    if not 0.0 < float(tolerance) < np.inf:  # NaN fails too
        raise ValueError(f"boundary tolerance {tolerance}: use a positive distance in metres "
                         "(default 1.0)")
    pred, truth = clean_polygons(pred), clean_polygons(truth)
    ok = np.array([p is not None and t is not None for p, t in zip(pred, truth)], dtype=bool)
    frame = pd.DataFrame(np.nan, index=range(len(pred)), columns=list(PAIR_COLUMNS))
    if not ok.any():
        return frame
    p, t = pred[ok], truth[ok]
    iou = shapely.area(shapely.intersection(p, t)) / shapely.area(shapely.union(p, t))
    n_p, n_t = vertex_counts(p), vertex_counts(t)
    t_holes, found = holes_found(p, t)
    frame.loc[ok, "iou"] = iou
    frame.loc[ok, "ciou"] = iou * (1 - np.abs(n_p - n_t) / (n_p + n_t))
    frame.loc[ok, "vertex_error"] = np.abs(n_p - n_t)
    frame.loc[ok, "polis"] = polis(p, t)
    frame.loc[ok, "mta"] = max_tangent_angle_error(p, t)
    frame.loc[ok, "boundary_f"] = boundary_f(p, t, tolerance)
    frame.loc[ok, "pred_vertices"] = n_p
    frame.loc[ok, "truth_vertices"] = n_t
    frame.loc[ok, "truth_holes"] = t_holes
    frame.loc[ok, "holes_found"] = found
    return frame


def summarize(frame: pd.DataFrame, groups=None) -> dict:
    """Per group (``groups``: one label per row, e.g. city; None = one group "all") and
    overall: the means and ratios of the module docstring, with the number of pairs."""
    def one(part: pd.DataFrame) -> dict:
        valid = part.dropna(subset=["iou"])
        holes = valid.truth_holes.sum()
        out = {"pairs": int(len(valid)), "pairs_skipped": int(len(part) - len(valid))}
        for col in ("iou", "ciou", "polis", "mta", "boundary_f", "vertex_error"):
            out[col] = round(float(valid[col].mean()), 4) if len(valid) else float("nan")
        out["n_ratio"] = (round(float(valid.pred_vertices.sum() / valid.truth_vertices.sum()), 4)
                          if len(valid) else float("nan"))
        out["hole_recall"] = (round(float(valid.holes_found.sum() / holes), 4) if holes
                              else float("nan"))
        out["truth_holes"] = int(holes)
        return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in out.items()}

    result = {"all": one(frame)}
    if groups is not None:
        labels = pd.Series(np.asarray(groups), index=frame.index)
        for name in sorted(labels.unique()):
            result[str(name)] = one(frame[labels == name])
    return result


def matched_pair_metrics(result, truth: pd.DataFrame, proposals: pd.DataFrame,
                         metres_per_unit: float | None = None, crs=None,
                         tolerance: float = 1.0) -> tuple[pd.DataFrame, list]:
    """Shape metrics of the pairs a SpaceNet score matched, and their groups.

    ``result``: the scorer's :class:`~mnc_d2.evaluation.spacenet_metric.ScoreResult`;
    ``truth`` / ``proposals``: one row per data row of the scored inputs (the rows its
    ``proposal_match`` refers to) with ``ImageId`` and ``geometry``; coordinates are brought to
    metres by :func:`to_metres`. Returns (one row per matched pair: ``ImageId`` and
    :data:`PAIR_COLUMNS`, the group of each pair under the score's grouping)."""
    if len(proposals) != len(result.proposal_match) or len(truth) != len(result.truth_matched):
        raise ValueError(f"polygon metrics: {len(proposals)} proposal and {len(truth)} truth rows "
                         f"for a score of {len(result.proposal_match)} proposal and "
                         f"{len(result.truth_matched)} truth rows; pass the files that were scored")
    rows = np.flatnonzero(result.proposal_match >= 0)
    p_geoms = np.asarray(proposals["geometry"].to_numpy(), dtype=object)[rows]
    t_geoms = np.asarray(truth["geometry"].to_numpy(), dtype=object)[result.proposal_match[rows]]
    frame = pair_metrics(to_metres(p_geoms, crs, metres_per_unit),
                         to_metres(t_geoms, crs, metres_per_unit), tolerance)
    image_ids = proposals["ImageId"].astype(str).to_numpy()[rows]
    frame.insert(0, "ImageId", image_ids)
    return frame, [result.group_of(i) for i in image_ids]


def csv_shape_summary(truth_csvs, proposal_csv, result, metres_per_unit: float,
                      tolerance: float = 1.0) -> dict:
    """:func:`summarize` of the pairs ``result`` matched between SpaceNet CSVs (pixel WKT read
    with shapely; several truth files in order, as they were scored)."""
    from ..formats.spacenet_csv import read_proposal_csv, read_truth_csv

    paths = [truth_csvs] if isinstance(truth_csvs, (str, bytes)) or hasattr(truth_csvs, "open") \
        else list(truth_csvs)
    truth = pd.concat([read_truth_csv(p) for p in paths], ignore_index=True)
    frame, groups = matched_pair_metrics(result, truth, read_proposal_csv(proposal_csv),
                                         metres_per_unit=metres_per_unit, tolerance=tolerance)
    return summarize(frame, groups)
