"""The SpaceNet building-footprint metric as pure, vectorised functions (no torch, no Detectron2).

Two rule sets (:mod:`.rules`, one description each):

``rules="spacenet"`` (default) reproduces the SpaceNet 2 leaderboard scorer, the Topcoder offline
tester v2.0 (Java), on every input:

* Polygons are read, measured and shaped as the tester does (:mod:`.tester_polygons`): string
  cutting instead of a WKT parser (first polygon of a MULTIPOLYGON, rings split at ``),(``),
  shoelace areas (exterior minus holes), even-odd regions for the overlap, no repair. A line
  containing ``POLYGON EMPTY`` or with BuildingId ``-1`` registers its image only.
* Polygons with area <= 0 or area < 20 are ignored on both sides (exactly 20 is kept).
* Per image, proposals in descending confidence (a stable sort: file order on ties; NaN
  confidences last, where the tester's order is undefined). Each is compared with the
  still-unmatched truth polygons whose bounding boxes overlap (touching counts);
  IoU = overlap / (area_s + area_t - overlap) with the areas above; the first maximum in truth
  order wins and IoU strictly greater than 0.5 makes a TP. Unmatched truths are FN.
* The images are the union of the truth and solution ImageIds (and of an image folder's
  listing, when given). An image with neither truth nor solution polygons is not scored, but its
  city still counts. TP/FP/FN are summed per city (the first three ``_`` fields of the ImageId,
  e.g. ``AOI_2_Vegas``); the score is the mean of the city F1s. F1 from the global sums is
  reported too. A ratio whose denominator is 0 is 0.
* Grouping follows the data (``group_by``, :func:`.rules.with_grouping`): SpaceNet 4 ImageIds
  (``..._nadir27_catid_...``) are grouped into the Nadir (<= 25 deg), Off-Nadir (26-40) and
  Very-Off-Nadir (> 40) segments and the score is the mean of the three segment F1s (SpaceNet
  4's headline number); ``none`` puts every image in one group.

``rules="solaris"`` reproduces the solaris 0.4.0 Python scorer (``spacenet_buildings_2``): WKT
parsed by shapely; proposals kept only if their area is > 20 and truth if >= 20; an invalid
proposal is replaced by ``buffer(0)`` (a bowtie keeps one lobe) before IoU; an invalid truth
polygon gets IoU 0 with everything (so it counts as FN); IoU is intersection area over GEOS union
area; proposals are ordered by pandas' default (not stable) descending sort of the confidence;
cities are the ImageId without its last ``_`` field.

Only pairs whose IoU could exceed the threshold are overlaid (a bound from the bounding-box
overlap and the areas rules out the rest without changing any match); ``full_iou=True`` overlays
every pair whose boxes overlap so that ``proposal_iou`` is each proposal's best IoU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely

from .rules import (GROUP_BY, RULES, RuleSet, area_kept, city_before_last, get_rules,
                    with_grouping)
from ..formats.spacenet_csv import SpaceNetCSVError, read_proposal_csv, read_truth_csv
from .convex_overlap import convex_rings, pair_overlap_areas
from .tester_polygons import PolygonTable, concat_tables, read_polygon_csv, table_from_geometries
from ..utils.arrays import ranges, unique
from ..utils.chunks import concat_row_slices, in_parallel

logger = logging.getLogger(__name__)

# rows per thread of the vectorised steps (boxes, tree queries, overlays); small inputs use one
_THREAD_CHUNK = 20000

__all__ = ["GROUP_BY", "RULES", "Counts", "ScoreResult", "SpaceNetCSVError", "city_of", "read_proposal_csv",
           "read_truth_csv", "score", "score_csv", "score_tables"]

MIN_AREA = 20.0
IOU_THRESHOLD = 0.5

city_of = city_before_last


# --- scoring ----------------------------------------------------------------------------------


@dataclass
class Counts:
    """TP/FP/FN and the ratios derived from them (0 where a denominator is 0)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p * r > 0 else 0.0

    def as_dict(self) -> dict:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "precision": self.precision,
                "recall": self.recall, "f1": self.f1}


@dataclass
class ScoreResult:
    """Everything the scorer computed.

    ``images``/``image_tp``/``image_fp``/``image_fn``/``image_scored``: one entry per image
    (sorted ImageIds); :attr:`per_image` is the same as a DataFrame. Per proposal row (input
    order, empty rows included): ``proposal_iou`` (best IoU with a truth of its image among the
    pairs overlaid, see the module docstring), ``proposal_match`` (index of the truth row it
    matched, -1 = none), ``proposal_kept`` (passed the area filter). Per truth row:
    ``truth_matched``, ``truth_kept``. ``group_of``: ImageId -> city of these rules.
    """

    rules: str
    overall: Counts
    cities: dict[str, Counts]
    images: np.ndarray = field(repr=False)
    image_tp: np.ndarray = field(repr=False)
    image_fp: np.ndarray = field(repr=False)
    image_fn: np.ndarray = field(repr=False)
    image_scored: np.ndarray = field(repr=False)
    proposal_iou: np.ndarray = field(repr=False)
    proposal_match: np.ndarray = field(repr=False)
    proposal_kept: np.ndarray = field(repr=False)
    truth_matched: np.ndarray = field(repr=False)
    truth_kept: np.ndarray = field(repr=False)
    group_of: object = field(repr=False, default=city_before_last)
    group_by: str = "city"

    @property
    def mean_city_f1(self) -> float:
        return float(np.mean([c.f1 for c in self.cities.values()])) if self.cities else 0.0

    PER_IMAGE_COLUMNS = ("ImageId", "city", "scored", "tp", "fp", "fn", "precision", "recall",
                         "f1")

    def per_image_columns(self) -> dict[str, np.ndarray]:
        """One array per :attr:`PER_IMAGE_COLUMNS` entry, one element per image."""
        tp, fp, fn = self.image_tp, self.image_fp, self.image_fn
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
            recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
            f1 = np.where(precision * recall > 0,
                          2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
        city = np.asarray([self.group_of(i) for i in self.images.tolist()], dtype=object)
        return dict(zip(self.PER_IMAGE_COLUMNS, (self.images, city, self.image_scored, tp, fp,
                                                 fn, precision, recall, f1)))

    @property
    def per_image(self):
        """DataFrame of :meth:`per_image_columns` (one row per image)."""
        import pandas as pd

        return pd.DataFrame(self.per_image_columns())

    def write_per_image_csv(self, handle) -> None:
        """Per-image rows as CSV into an open text ``handle`` (no pandas needed)."""
        import csv

        columns = self.per_image_columns()
        writer = csv.writer(handle)
        writer.writerow(self.PER_IMAGE_COLUMNS)
        writer.writerows(zip(*(columns[c].tolist() for c in self.PER_IMAGE_COLUMNS)))

    def to_json(self) -> dict:
        return {
            "rules": self.rules,
            "group_by": self.group_by,
            "overall": self.overall.as_dict(),
            "mean_city_f1": self.mean_city_f1,
            "cities": {name: c.as_dict() for name, c in sorted(self.cities.items())},
        }


def overlay_areas(op, a: np.ndarray, b: np.ndarray, min_chunk: int | None = None) -> np.ndarray:
    """(K,) ``area(op(a[k], b[k]))`` for shapely's ``intersection`` or ``union``.

    shapely releases the GIL inside its vectorised GEOS calls, so large arrays are cut into
    slices overlaid by a few threads (results are per pair, hence identical to one call).
    """
    return concat_row_slices(lambda s: shapely.area(op(a[s], b[s])), len(a),
                             min_chunk or _THREAD_CHUNK)


def _same_image_box_pairs(p_bounds: np.ndarray, t_bounds: np.ndarray, p_img: np.ndarray,
                          t_img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(proposal, truth) index pairs of the same image whose bounding boxes overlap (touching
    counts), ordered by proposal, then truth.

    p_bounds/t_bounds: (P, 4)/(T, 4) minx, miny, maxx, maxy; p_img/t_img: (P,)/(T,) image codes.
    All tiles share one pixel frame, so the boxes are shifted along x by (image code x frame
    width) and the pairs that overlap along x are found by sorting (:func:`_x_overlap_pairs`);
    when those are many times more than the boxes (boxes stacked in columns), or a coordinate is
    not finite, an STRtree over the shifted boxes finds them instead. Either way the candidates
    are then settled exactly on the unshifted boxes.
    """
    if len(p_bounds) == 0 or len(t_bounds) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    lo = min(p_bounds[:, 0].min(), t_bounds[:, 0].min())
    span = max(p_bounds[:, 2].max(), t_bounds[:, 2].max()) - lo + 1.0
    finite = np.isfinite(span) and np.isfinite(p_bounds).all() and np.isfinite(t_bounds).all()
    if not np.isfinite(span):
        span = 1.0  # non-finite coordinates: no shifting; the image check below still holds
    p_off, t_off = (p_img * span - lo), (t_img * span - lo)
    pairs = None
    if finite:
        pairs = _x_overlap_pairs(p_bounds[:, 0] + p_off, p_bounds[:, 2] + p_off,
                                 t_bounds[:, 0] + t_off, t_bounds[:, 2] + t_off,
                                 limit=_SWEEP_PAIRS_PER_BOX * (len(p_bounds) + len(t_bounds)))
    pi, ti = pairs if pairs is not None else _tree_box_pairs(p_bounds, t_bounds, p_off, t_off)
    # The candidates' box test was on shifted floats (the sort-based one only along x): settle
    # every side exactly on the unshifted boxes, y first (it removes most candidates), and the
    # image (guards against float rounding at the tile seams).
    keep = ((p_bounds[:, 1][pi] <= t_bounds[:, 3][ti])
            & (p_bounds[:, 3][pi] >= t_bounds[:, 1][ti]))
    pi, ti = pi[keep], ti[keep]
    keep = ((p_img[pi] == t_img[ti]) & (p_bounds[:, 0][pi] <= t_bounds[:, 2][ti])
            & (p_bounds[:, 2][pi] >= t_bounds[:, 0][ti]))
    pi, ti = pi[keep], ti[keep]
    order = np.lexsort((ti, pi))
    return pi[order], ti[order]


# x-overlapping pairs the sort-based search may expand per box before the STRtree takes over
_SWEEP_PAIRS_PER_BOX = 32


def _x_overlap_pairs(p0: np.ndarray, p1: np.ndarray, t0: np.ndarray, t1: np.ndarray,
                     limit: int):
    """(proposal, truth) index pairs whose x intervals [p0, p1] (P,) and [t0, t1] (T,) overlap,
    widened by a rounding margin (a superset: the caller settles them exactly); None when they
    would be more than ``limit``.

    Every overlapping pair has the truth starting inside the proposal's interval, or the
    proposal starting inside the truth's, strictly after the truth's start: two range queries
    on sorted starts, each pair found once.
    """
    eps = 1e-12 * (max(np.abs(p0).max(), np.abs(p1).max(), np.abs(t0).max(),
                       np.abs(t1).max()) + 1.0)
    t_order = np.argsort(t0, kind="stable")
    p_order = np.argsort(p0, kind="stable")
    t_sorted, p_sorted = t0[t_order], p0[p_order]
    a_lo = np.searchsorted(t_sorted, p0 - eps, side="left")  # truths starting in [p0, p1]
    a_hi = np.searchsorted(t_sorted, p1 + eps, side="right")
    b_lo = np.searchsorted(p_sorted, t0 + eps, side="right")  # proposals in (t0, t1]
    b_hi = np.searchsorted(p_sorted, t1 + eps, side="right")
    a_n, b_n = np.maximum(a_hi - a_lo, 0), np.maximum(b_hi - b_lo, 0)
    if int(a_n.sum()) + int(b_n.sum()) > limit:
        return None
    pi = np.concatenate([np.repeat(np.arange(len(p0)), a_n),
                         p_order[ranges(b_lo, b_lo + b_n)]])
    ti = np.concatenate([t_order[ranges(a_lo, a_lo + a_n)],
                         np.repeat(np.arange(len(t0)), b_n)])
    return pi, ti


def _tree_box_pairs(p_bounds, t_bounds, p_off, t_off) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs of :func:`_same_image_box_pairs` from an STRtree of the shifted boxes."""

    def boxes(bounds: np.ndarray, off: np.ndarray) -> np.ndarray:
        return concat_row_slices(lambda s: shapely.box(bounds[s, 0] + off[s], bounds[s, 1],
                                                       bounds[s, 2] + off[s], bounds[s, 3]),
                                 len(bounds), _THREAD_CHUNK)

    tree = shapely.STRtree(boxes(t_bounds, t_off))
    p_boxes = boxes(p_bounds, p_off)
    # the query in slices of proposals (threads; GEOS releases the GIL): each slice's pairs come
    # ordered by proposal, so the concatenation is the one-call result
    pi, ti = concat_row_slices(lambda s: tree.query(p_boxes[s]) + np.array([[s.start], [0]]),
                               len(p_boxes), _THREAD_CHUNK, axis=1)
    return pi, ti


def _proposal_order(conf: np.ndarray, rules: RuleSet) -> np.ndarray:
    """Processing order of proposals: descending confidence, NaN last."""
    if rules.order == "pandas":
        import pandas as pd

        # solaris sorts with pandas' default (quicksort, not stable); reproduce it exactly.
        return pd.Series(conf).sort_values(ascending=False).index.to_numpy()
    key = np.where(np.isnan(conf), np.inf, -conf)
    return np.argsort(key, kind="stable")


def _greedy_match(order: np.ndarray, pi: np.ndarray, ti: np.ndarray, iou: np.ndarray,
                  num_props: int, num_truths: int, threshold: float) -> np.ndarray:
    """Greedy one-to-one matching; returns (P,) truth index matched per proposal, -1 if none.

    Only pairs with IoU > threshold can produce a match: if a proposal's best still-unmatched
    truth has IoU <= threshold it is an FP anyway. Candidates are pre-sorted by (-IoU, truth
    index) so the first unmatched candidate is the best one (ties: first truth in file order).
    """
    match = np.full(num_props, -1, dtype=np.int64)
    strong = iou > threshold
    pi, ti, iou = pi[strong], ti[strong], iou[strong]
    if pi.size == 0:
        return match
    # A pair that is the only strong pair of its proposal and of its truth is a match whatever
    # the order (nobody else can take that truth, and the proposal has no other choice); only
    # the rest, where proposals compete, go through the loop below.
    alone = ((np.bincount(pi, minlength=num_props)[pi] == 1)
             & (np.bincount(ti, minlength=num_truths)[ti] == 1))
    match[pi[alone]] = ti[alone]
    pi, ti, iou = pi[~alone], ti[~alone], iou[~alone]
    if pi.size == 0:
        return match
    sort = np.lexsort((ti, -iou, pi))
    pi, ti = pi[sort], ti[sort]
    starts = np.searchsorted(pi, np.arange(num_props + 1))
    taken = np.zeros(num_truths, dtype=bool)
    has_candidates = starts[1:] > starts[:-1]
    ti_list = ti.tolist()
    for p in order[has_candidates[order]].tolist():
        for k in range(starts[p], starts[p + 1]):
            t = ti_list[k]
            if not taken[t]:
                taken[t] = True
                match[p] = t
                break
    return match


def _box_overlap_area(pb: np.ndarray, tb: np.ndarray) -> np.ndarray:
    """(K,) area of the overlap of boxes ``pb`` and ``tb`` (K, 4) that are known to overlap."""
    return ((np.minimum(pb[:, 2], tb[:, 2]) - np.maximum(pb[:, 0], tb[:, 0]))
            * (np.minimum(pb[:, 3], tb[:, 3]) - np.maximum(pb[:, 1], tb[:, 1])))


def _image_counts(match: np.ndarray, p_kept: np.ndarray, t_kept: np.ndarray, p_code: np.ndarray,
                  t_code: np.ndarray, num_images: int):
    """Per-image counts from a matching: returns (truth matched (T,) bool, tp, fp, fn,
    scored), the last four (num_images,); an image is scored when it has a kept polygon."""
    matched = match >= 0
    t_matched = np.zeros(len(t_kept), dtype=bool)
    t_matched[match[matched]] = True
    tp = np.bincount(p_code[matched], minlength=num_images)
    fp = np.bincount(p_code[p_kept & ~matched], minlength=num_images)
    fn = np.bincount(t_code[t_kept & ~t_matched], minlength=num_images)
    scored = (np.bincount(p_code[p_kept], minlength=num_images)
              + np.bincount(t_code[t_kept], minlength=num_images)) > 0
    return t_matched, tp, fp, fn, scored


def _iou_bound_prune(pi, ti, p_area, t_area, p_rarea, t_rarea, p_bounds, t_bounds,
                     threshold: float) -> np.ndarray:
    """(K,) bool: pairs whose IoU could exceed ``threshold`` (the others cannot match).

    The overlap is at most the smaller region area and the overlap of the bounding boxes;
    IoU = ov / (a_s + a_t - ov) grows with ov while the denominator is positive, so that bound
    settles the pair. Pairs with odd areas (denominator not positive at the bound, non-finite
    values) are always kept; a 1e-9 margin absorbs rounding of the region areas.
    """
    box = _box_overlap_area(p_bounds[pi], t_bounds[ti])
    bound = np.minimum(np.minimum(p_rarea[pi], t_rarea[ti]), box)
    denom = p_area[pi] + t_area[ti] - bound
    with np.errstate(divide="ignore", invalid="ignore"):
        upper = bound / denom
    odd = ~(np.isfinite(upper) & (denom > 0))
    return odd | (upper > threshold - 1e-9)


def _image_codes(table_images: np.ndarray, images: np.ndarray) -> np.ndarray:
    """(N,) position of each of ``table_images`` (N,) in the sorted ``images`` (every one is
    there). A dict lookup per row: converting N Python strings to a numpy string array for a
    ``searchsorted`` costs ~4x more."""
    if len(table_images) == 0:
        return np.zeros(0, dtype=np.int64)
    position = {name: k for k, name in enumerate(images.tolist())}
    try:
        return np.fromiter(map(position.__getitem__, table_images.tolist()), dtype=np.int64,
                           count=len(table_images))
    except KeyError:  # ids that are not str (an in-memory table): compare as text
        return np.searchsorted(images, table_images.astype(str)).astype(np.int64)


class _Shapes:
    """The overlap shapes of one table: strictly convex rings as vertex arrays (overlaid by
    :mod:`.convex_overlap`), the tester's regions (shapely, built on first use) for the rest."""

    def __init__(self, table: PolygonTable):
        self.table = table
        self.convex, self.vertices, self.count, self.area = convex_rings(
            table.coords, table.ring_offsets, table.poly_offsets)
        self.regions = np.empty(len(table), dtype=object)
        self.built = np.zeros(len(table), dtype=bool)

    def region(self, rows: np.ndarray) -> np.ndarray:
        need = unique(rows[~self.built[rows]])
        if len(need):
            self.regions[need] = self.table.regions(need)
            self.built[need] = True
        return self.regions[rows]

    def region_areas(self, rows: np.ndarray) -> np.ndarray:
        """(N,) area of the region of every polygon in ``rows`` (convex rings: their shoelace
        area; 0 for polygons not in ``rows``)."""
        out = np.where(self.convex, self.area, 0.0)
        used = unique(rows[~self.convex[rows]])
        if len(used):
            out[used] = shapely.area(self.region(used))
        return out


def _pair_ious(pi, ti, p: _Shapes, t: _Shapes, p_area, t_area, threshold: float,
               margin: float = 1e-9) -> np.ndarray:
    """(K,) the tester's IoU of each (proposal, truth) pair: overlap of the regions over
    ``p_area + t_area - overlap`` (tester areas).

    Pairs of strictly convex rings are overlaid by :mod:`.convex_overlap`; the rest, and every
    fast pair whose IoU lies within ``margin`` of the threshold or of another candidate of the
    same proposal (where rounding could decide the greedy matching), by GEOS.
    """
    overlap = np.full(len(pi), np.nan)
    fast = np.flatnonzero(p.convex[pi] & t.convex[ti])
    if len(fast):
        overlap[fast] = pair_overlap_areas(p.vertices[pi[fast]], p.count[pi[fast]],
                                           t.vertices[ti[fast]], t.count[ti[fast]])
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = overlap / (p_area[pi] + t_area[ti] - overlap)
    settle = np.isnan(overlap) | (np.abs(iou - threshold) <= margin)
    if len(fast):
        # candidates of one proposal whose IoUs (fast) nearly tie: order decided by GEOS
        order = np.lexsort((iou, pi))
        close = (np.diff(iou[order]) <= margin) & (pi[order][1:] == pi[order][:-1])
        settle[order[1:][close]] = True
        settle[order[:-1][close]] = True
    slow = np.flatnonzero(settle)
    if len(slow):
        overlap[slow] = overlay_areas(shapely.intersection, p.region(pi[slow]),
                                      t.region(ti[slow]))
        with np.errstate(divide="ignore", invalid="ignore"):
            iou[slow] = overlap[slow] / (p_area[pi[slow]] + t_area[ti[slow]] - overlap[slow])
    return iou


def check_iou_threshold(value: float) -> float:
    """The IoU a pair must exceed to match (strictly, as the tester): a ValueError naming it
    unless 0 <= value < 1 (at 1 or above nothing could match; NaN compares false)."""
    if not 0.0 <= float(value) < 1.0:  # NaN fails the comparison too
        raise ValueError(f"IoU threshold {value}: use a value in [0, 1) (a pair matches when "
                         "its IoU exceeds it; SpaceNet: 0.5)")
    return float(value)


def score_tables(truth: PolygonTable, proposals: PolygonTable,
                 rules: str | RuleSet = "spacenet", iou_threshold: float = IOU_THRESHOLD,
                 min_area: float = MIN_AREA, images=(), full_iou: bool = False,
                 group_by: str | None = None) -> ScoreResult:
    """Score two tester-read tables (:mod:`.tester_polygons`) by the rules in the docstring.

    ``images``: extra ImageIds (an image folder's listing) that count as images even without
    rows. Per-row arrays of the result follow the tables' rows.
    """
    rs = get_rules(rules)
    check_iou_threshold(iou_threshold)
    t_area, p_area = truth.areas(), proposals.areas()
    t_kept_poly = (t_area > 0) & area_kept(t_area, min_area, rs.truth_area_inclusive)
    p_kept_poly = (p_area > 0) & area_kept(p_area, min_area, rs.proposal_area_inclusive)
    if not truth.registered or not proposals.registered:
        logger.warning("the %s file has no rows: the SpaceNet tester prints 'Nothing to score' "
                       "for this input; scored here as empty", "truth" if not truth.registered
                       else "proposal")
    image_list = sorted(set(truth.registered) | set(proposals.registered) | set(images))
    rs, group_by = with_grouping(rs, group_by, image_list)
    image_arr = np.asarray(image_list, dtype=str)
    t_code = _image_codes(truth.image, image_arr)
    p_code = _image_codes(proposals.image, image_arr)

    t_idx, p_idx = np.flatnonzero(t_kept_poly), np.flatnonzero(p_kept_poly)
    t_bounds, p_bounds = truth.bounds(), proposals.bounds()
    pi, ti = _same_image_box_pairs(p_bounds[p_idx], t_bounds[t_idx], p_code[p_idx],
                                   t_code[t_idx])
    pi, ti = p_idx[pi], t_idx[ti]
    iou = np.zeros(0)
    if len(pi):
        # each side's shapes (and region areas) in its own thread: the two are independent
        p_shapes, t_shapes = in_parallel(lambda: _Shapes(proposals), lambda: _Shapes(truth))
        if not full_iou:
            p_rarea, t_rarea = in_parallel(lambda: p_shapes.region_areas(pi),
                                           lambda: t_shapes.region_areas(ti))
            keep = _iou_bound_prune(pi, ti, p_area, t_area, p_rarea, t_rarea, p_bounds,
                                    t_bounds, iou_threshold)
            pi, ti = pi[keep], ti[keep]
        iou = _pair_ious(pi, ti, p_shapes, t_shapes, p_area, t_area, iou_threshold)

    num_p, num_t = len(proposals), len(truth)
    order = _proposal_order(proposals.confidence, rs)
    order = order[p_kept_poly[order]]
    match_poly = _greedy_match(order, pi, ti, iou, num_p, num_t, iou_threshold)

    matched = match_poly >= 0
    t_matched_poly, tp, fp, fn, scored = _image_counts(match_poly, p_kept_poly, t_kept_poly,
                                                       p_code, t_code, len(image_list))

    # Per-row arrays (rows without a polygon are neither kept nor matched).
    best = np.zeros(num_p)
    ok = np.isfinite(iou)
    np.maximum.at(best, pi[ok], iou[ok])
    p_rows, t_rows = proposals.row, truth.row
    proposal_iou = np.zeros(proposals.num_rows)
    proposal_iou[p_rows] = best
    proposal_match = np.full(proposals.num_rows, -1, dtype=np.int64)
    proposal_match[p_rows[matched]] = t_rows[match_poly[matched]]
    proposal_kept = np.zeros(proposals.num_rows, dtype=bool)
    proposal_kept[p_rows] = p_kept_poly
    truth_matched = np.zeros(truth.num_rows, dtype=bool)
    truth_matched[t_rows] = t_matched_poly
    truth_kept = np.zeros(truth.num_rows, dtype=bool)
    truth_kept[t_rows] = t_kept_poly
    return _result(rs, image_arr, tp, fp, fn, scored, proposal_iou, proposal_match,
                   proposal_kept, truth_matched, truth_kept, group_by=group_by)


def _result(rs: RuleSet, images, tp, fp, fn, scored, *per_row, group_by: str) -> ScoreResult:
    city_names = np.asarray([rs.group(i) for i in images.tolist()], dtype=str)
    cities = {}
    for city in sorted(set(city_names.tolist())):
        sel = city_names == city
        cities[city] = Counts(int(tp[sel].sum()), int(fp[sel].sum()), int(fn[sel].sum()))
    overall = Counts(int(tp.sum()), int(fp.sum()), int(fn.sum()))
    return ScoreResult(rs.name, overall, cities, images, tp, fp, fn, scored, *per_row,
                       group_of=rs.group, group_by=group_by)


def _score_wkt(truth, proposals, rs: RuleSet, iou_threshold: float, min_area: float,
               images=(), full_iou: bool = False, group_by: str | None = None) -> ScoreResult:
    """The ``reader="wkt"`` rule sets (solaris): shapely geometries from the DataFrames."""
    check_iou_threshold(iou_threshold)
    t_geom = np.asarray(truth["geometry"].to_numpy(), dtype=object)
    p_geom = np.asarray(proposals["geometry"].to_numpy(), dtype=object)
    t_ids = truth["ImageId"].astype(str).to_numpy()
    p_ids = proposals["ImageId"].astype(str).to_numpy()
    conf = proposals["Confidence"].to_numpy(dtype=np.float64)

    t_area, p_area = shapely.area(t_geom), shapely.area(p_geom)
    t_kept = area_kept(t_area, min_area, rs.truth_area_inclusive)
    p_kept = area_kept(p_area, min_area, rs.proposal_area_inclusive)
    p_eval = p_geom.copy()
    invalid = ~shapely.is_valid(p_geom)
    if rs.invalid_proposal == "buffer0" and invalid.any():
        p_eval[invalid] = shapely.buffer(p_geom[invalid], 0.0)

    images = np.asarray(sorted(set(t_ids) | set(p_ids) | set(images)), dtype=str)
    rs, group_by = with_grouping(rs, group_by, images.tolist())
    t_code, p_code = _image_codes(t_ids, images), _image_codes(p_ids, images)
    t_idx, p_idx = np.flatnonzero(t_kept), np.flatnonzero(p_kept)
    p_bounds, t_bounds = shapely.bounds(p_eval), shapely.bounds(t_geom)
    pi, ti = _same_image_box_pairs(p_bounds[p_idx], t_bounds[t_idx], p_code[p_idx],
                                   t_code[t_idx])
    pi, ti = p_idx[pi], t_idx[ti]
    if rs.invalid_truth == "never_match":
        # An invalid truth gets IoU 0 without any overlay (GEOS could raise on it).
        keep = shapely.is_valid(t_geom[ti])
        pi, ti = pi[keep], ti[keep]
    pe_area = shapely.area(p_eval)
    if not full_iou:
        # IoU <= min(areas, box overlap) / max(areas) (the union covers either polygon).
        box = _box_overlap_area(p_bounds[pi], t_bounds[ti])
        big = np.maximum(pe_area[pi], t_area[ti])
        with np.errstate(divide="ignore", invalid="ignore"):
            upper = np.minimum(np.minimum(pe_area[pi], t_area[ti]), box) / big
        keep = ~(upper <= iou_threshold - 1e-9)
        pi, ti = pi[keep], ti[keep]
    inter = overlay_areas(shapely.intersection, p_eval[pi], t_geom[ti])
    if rs.union == "geos":
        # area(union) equals area_p + area_t - inter up to rounding; GEOS' own union area is
        # computed where rounding could matter: IoU within 1e-9 of the threshold, or a
        # proposal with several candidates above it (their order decides the match).
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / (pe_area[pi] + t_area[ti] - inter)
        strong = iou > iou_threshold - 1e-9
        several = np.bincount(pi[strong], minlength=len(p_geom)) > 1
        exact = full_iou | (np.abs(iou - iou_threshold) < 1e-9) | (strong & several[pi])
        if np.any(exact):
            union = overlay_areas(shapely.union, p_eval[pi[exact]], t_geom[ti[exact]])
            with np.errstate(divide="ignore", invalid="ignore"):
                iou[exact] = inter[exact] / union
        iou = np.where(np.isfinite(iou), iou, 0.0)
    else:
        union = pe_area[pi] + t_area[ti] - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)

    best_iou = np.zeros(len(p_geom))
    np.maximum.at(best_iou, pi, iou)
    order = _proposal_order(conf, rs)
    order = order[p_kept[order]]
    match = _greedy_match(order, pi, ti, iou, len(p_geom), len(t_geom), iou_threshold)
    t_matched, tp, fp, fn, scored = _image_counts(match, p_kept, t_kept, p_code, t_code,
                                                  len(images))
    return _result(rs, images, tp, fp, fn, scored, best_iou, match, p_kept, t_matched, t_kept,
                   group_by=group_by)


def score(truth, proposals, rules: str | RuleSet = "spacenet",
          iou_threshold: float = IOU_THRESHOLD, min_area: float = MIN_AREA, images=(),
          full_iou: bool = False, group_by: str | None = None) -> ScoreResult:
    """Score in-memory proposals against truth (module docstring for the rules).

    truth: DataFrame with T rows of ImageId, geometry (shapely, pixel coordinates).
    proposals: DataFrame with P rows of ImageId, geometry, Confidence. Empty geometries register
    their image. For the tester rules each geometry is read as the tester would read its row
    written by :func:`mnc_d2.formats.spacenet_csv.wkt_for_tester` (first polygon of a
    MultiPolygon: write MultiPolygons as one row per part, as
    :func:`mnc_d2.formats.spacenet_csv.write_proposal_csv` does).
    ``images``: extra ImageIds to score (an image folder's listing).
    """
    rs = get_rules(rules)
    if rs.reader == "tester":
        t_table = table_from_geometries(truth["ImageId"].astype(str).to_numpy(),
                                        truth["geometry"].to_numpy())
        p_table = table_from_geometries(proposals["ImageId"].astype(str).to_numpy(),
                                        proposals["geometry"].to_numpy(),
                                        proposals["Confidence"].to_numpy(dtype=np.float64))
        return score_tables(t_table, p_table, rs, iou_threshold, min_area, images, full_iou,
                            group_by)
    return _score_wkt(truth, proposals, rs, iou_threshold, min_area, images, full_iou, group_by)


def score_csv(truth_csv, proposal_csv, rules: str = "spacenet",
              iou_threshold: float = IOU_THRESHOLD, min_area: float = MIN_AREA, images=(),
              full_iou: bool = False, warn_unknown: bool = True,
              group_by: str | None = None) -> ScoreResult:
    """Read both CSVs the way the rule set's reference scorer does and score them.

    ``truth_csv`` may be one path or a list of paths (read in order, as the tester's several
    ``-truth`` files). ``images``: extra ImageIds (see :func:`image_folder_ids`).
    ``warn_unknown``: log proposals for images the truth does not name (they count as FP).
    ``group_by``: city | nadir | none | auto (default: nadir for SpaceNet 4 ImageIds, else
    city); the score is the mean of the groups' F1s.
    """
    rs = get_rules(rules)
    truth_paths = [truth_csv] if isinstance(truth_csv, (str, Path)) else list(truth_csv)
    if rs.reader == "tester":
        truth, proposals = _read_both(truth_paths, proposal_csv)
        if not truth.registered:
            raise SpaceNetCSVError(f"truth CSV {', '.join(map(str, truth_paths))} has no data "
                                   "rows (the SpaceNet tester prints 'Nothing to score'); "
                                   "expected rows 'ImageId,BuildingId,PolygonWKT_Pix,...'")
        if warn_unknown:
            _warn_unknown(set(proposals.registered) - set(truth.registered), proposal_csv)
        return score_tables(truth, proposals, rs, iou_threshold, min_area, images,
                            full_iou, group_by)
    import pandas as pd

    truth = pd.concat([read_truth_csv(p) for p in truth_paths], ignore_index=True)
    proposals = read_proposal_csv(proposal_csv)
    if warn_unknown:
        _warn_unknown(set(proposals["ImageId"]) - set(truth["ImageId"]), proposal_csv)
    return _score_wkt(truth, proposals, rs, iou_threshold, min_area, images, full_iou, group_by)


def _read_truth_tables(paths: list) -> PolygonTable:
    return concat_tables([read_polygon_csv(p, truth=True) for p in paths])


def _read_both(truth_paths: list, proposal_csv):
    """Read the truth and proposal files (tester rules): the proposals in a second thread while
    this one reads the truth when the machine has a second core (most of the reading is pyarrow's
    string kernels, which release the GIL; measured 0.44 s against 0.75 s, medians of 8, for the
    two files of 2,000 tiles on 2 cores). An error in either file is raised as it is."""
    proposals, truth = in_parallel(lambda: read_polygon_csv(proposal_csv, truth=False),
                                   lambda: _read_truth_tables(truth_paths))
    return truth, proposals


def _warn_unknown(unknown: set, proposal_csv) -> None:
    if unknown:
        logger.warning("%d ImageId(s) in %s are not in the truth (e.g. %s): all their proposals "
                       "count as FP", len(unknown), proposal_csv, sorted(unknown)[0])


def image_folder_ids(folder: str | Path) -> list[str]:
    """ImageIds of an image folder as the tester lists them: ``<folder>/PAN/*.tif`` with every
    ``.tif`` and ``PAN_`` removed from the name (the tester's ``-image-dir``)."""
    pan = Path(folder) / "PAN"
    if not pan.is_dir():
        raise FileNotFoundError(f"image folder {folder} has no PAN/ subfolder; the SpaceNet "
                                "tester lists images from <image-dir>/PAN/*.tif")
    return sorted(p.name.replace(".tif", "").replace("PAN_", "")
                  for p in pan.iterdir() if p.name.endswith(".tif"))
