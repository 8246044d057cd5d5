"""The SpaceNet building-footprint metric as pure, vectorised functions (no Detectron2 import).

Rules (``rules="spacenet"``, the SpaceNet 2 leaderboard):

* Truth rows are ``ImageId,BuildingId,PolygonWKT_Pix,PolygonWKT_Geo``; proposal rows are
  ``ImageId,BuildingId,PolygonWKT_Pix,Confidence``. Z coordinates are dropped. ``POLYGON EMPTY``
  (BuildingId -1) registers an image without buildings. The images scored are the union of the
  ImageIds of both files; an image only in the proposals scores all its proposals as FP.
* Polygons whose area is below 20 px are ignored on both sides (neither TP, FP nor FN). Areas
  count holes (exterior minus holes).
* Proposals are taken in descending confidence; ties keep file order (a stable sort). NaN
  confidences sort last. Each proposal is compared with every still-unmatched truth polygon of
  its image; the best IoU wins (ties go to the truth that comes first in the file). IoU strictly
  greater than 0.5 makes a TP and removes that truth from the pool, otherwise the proposal is an
  FP. Unmatched truth polygons are FN. There is no re-matching.
* Self-intersecting (invalid) polygons, on either side, are repaired with
  ``shapely.make_valid(method="structure", keep_collapsed=False)`` before anything else: a bowtie
  becomes its two triangles; collapsed (zero-area) parts are dropped. Area and IoU use the
  repaired shape.
* TP/FP/FN are summed per city (the ImageId without its last ``_`` part, e.g. ``AOI_2_Vegas``);
  precision, recall and F1 per city come from those sums. The SpaceNet 2 score is the mean of the
  city F1s. F1 from the global sums is reported too. A ratio whose denominator is 0 is 0.

Rules ``"solaris"`` reproduce the solaris 0.4.0 Python scorer (``spacenet_buildings_2``):
proposals are kept only if their raw area is > 20 and truth if >= 20; an invalid proposal is
replaced by ``buffer(0)`` (a bowtie keeps one lobe) before IoU; an invalid truth polygon gets IoU 0
with everything, so it is never matched (and counts as FN); IoU is intersection area over union
area (GEOS union); proposals are ordered by pandas' default (not stable) descending sort of the
confidence. Everything else is as above.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import shapely

logger = logging.getLogger(__name__)

RULES = ("spacenet", "solaris")
MIN_AREA = 20.0
IOU_THRESHOLD = 0.5
TRUTH_COLUMNS = ("ImageId", "BuildingId", "PolygonWKT_Pix")
PROPOSAL_COLUMNS = ("ImageId", "BuildingId", "PolygonWKT_Pix", "Confidence")


class SpaceNetCSVError(ValueError):
    """A truth or proposal CSV that cannot be scored; the message names file, row and format."""


def city_of(image_id: str) -> str:
    """``AOI_2_Vegas_img1234`` -> ``AOI_2_Vegas`` (everything before the last ``_``)."""
    head, sep, _ = str(image_id).rpartition("_")
    return head if sep else str(image_id)


# --- reading ----------------------------------------------------------------------------------


def _read_table(path: str | Path, required: tuple[str, ...], kind: str) -> pd.DataFrame:
    path = Path(path)
    expected = ",".join(required)
    if not path.is_file():
        raise SpaceNetCSVError(f"{kind} CSV {path} does not exist")
    if path.stat().st_size == 0:
        raise SpaceNetCSVError(f"{kind} CSV {path} is empty; expected a header line '{expected}'")
    try:
        frame = pd.read_csv(path, dtype={"ImageId": str}, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise SpaceNetCSVError(f"{kind} CSV {path} is not a readable CSV ({exc})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise SpaceNetCSVError(
            f"{kind} CSV {path} lacks column(s) {missing}; its header is "
            f"{list(frame.columns)}, expected '{expected}'"
        )
    if frame["ImageId"].isna().any():
        row = int(np.flatnonzero(frame["ImageId"].isna().to_numpy())[0])
        raise SpaceNetCSVError(f"{kind} CSV {path}, line {row + 2}: empty ImageId")
    return frame


def parse_wkt_column(values: pd.Series, path: str | Path, kind: str) -> np.ndarray:
    """WKT strings -> 2-D shapely geometries; malformed rows raise naming the line and format."""
    text = values.fillna("").astype(str).to_numpy()
    geoms = shapely.from_wkt(text, on_invalid="ignore")
    bad = np.flatnonzero(pd.isna(geoms))
    if bad.size:
        row = int(bad[0])
        raise SpaceNetCSVError(
            f"{kind} CSV {path}, line {row + 2}: PolygonWKT_Pix {text[row][:80]!r} is not valid "
            f"WKT ({bad.size} such row(s)); expected e.g. 'POLYGON ((x0 y0 0, x1 y1 0, ...))' "
            "or 'POLYGON EMPTY'"
        )
    kinds = shapely.get_type_id(geoms)
    polygonal = np.isin(kinds, (3, 6)) | shapely.is_empty(geoms)  # Polygon, MultiPolygon
    if not polygonal.all():
        row = int(np.flatnonzero(~polygonal)[0])
        raise SpaceNetCSVError(
            f"{kind} CSV {path}, line {row + 2}: {text[row][:80]!r} is not a POLYGON or "
            "MULTIPOLYGON"
        )
    return shapely.force_2d(geoms)


def _warn_duplicates(frame: pd.DataFrame, columns: list[str], path, kind: str) -> None:
    dups = int(frame.duplicated(subset=columns).sum())
    if dups:
        logger.warning(
            "%s CSV %s has %d duplicate row(s); each is scored as a separate polygon "
            "(a duplicate proposal becomes an FP, a duplicate truth an FN)",
            kind,
            path,
            dups,
        )


def read_truth_csv(path: str | Path) -> pd.DataFrame:
    """Read a SpaceNet truth CSV -> DataFrame(ImageId, BuildingId, geometry)."""
    frame = _read_table(path, TRUTH_COLUMNS, "truth")
    _warn_duplicates(frame, list(TRUTH_COLUMNS), path, "truth")
    geoms = parse_wkt_column(frame["PolygonWKT_Pix"], path, "truth")
    return pd.DataFrame(
        {"ImageId": frame["ImageId"].astype(str).to_numpy(), "BuildingId": frame["BuildingId"],
         "geometry": geoms}
    )


def read_proposal_csv(path: str | Path) -> pd.DataFrame:
    """Read a SpaceNet proposal CSV -> DataFrame(ImageId, BuildingId, geometry, Confidence).

    A non-numeric confidence is an error; an empty or NaN confidence is kept as NaN and sorts
    last (documented rule).
    """
    frame = _read_table(path, PROPOSAL_COLUMNS, "proposal")
    conf = pd.to_numeric(frame["Confidence"], errors="coerce")
    bad = conf.isna() & frame["Confidence"].notna() & (frame["Confidence"].astype(str) != "nan")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise SpaceNetCSVError(
            f"proposal CSV {path}, line {row + 2}: Confidence {frame['Confidence'].iloc[row]!r} "
            "is not a number; expected a float such as 0.87"
        )
    if conf.isna().any():
        logger.warning("proposal CSV %s: %d NaN confidence(s) sort last", path, conf.isna().sum())
    _warn_duplicates(frame, list(PROPOSAL_COLUMNS), path, "proposal")
    geoms = parse_wkt_column(frame["PolygonWKT_Pix"], path, "proposal")
    return pd.DataFrame(
        {"ImageId": frame["ImageId"].astype(str).to_numpy(), "BuildingId": frame["BuildingId"],
         "geometry": geoms, "Confidence": conf.to_numpy(dtype=np.float64)}
    )


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

    ``per_image``: one row per ImageId (ImageId, city, tp, fp, fn, precision, recall, f1).
    ``proposal_iou`` / ``proposal_match`` / ``proposal_kept``: per proposal row (input order):
    best IoU with any kept truth of its image, the index of the truth row it matched (-1 = none),
    and whether it passed the area filter. ``truth_matched`` / ``truth_kept``: per truth row.
    """

    rules: str
    overall: Counts
    cities: dict[str, Counts]
    per_image: pd.DataFrame
    proposal_iou: np.ndarray = field(repr=False)
    proposal_match: np.ndarray = field(repr=False)
    proposal_kept: np.ndarray = field(repr=False)
    truth_matched: np.ndarray = field(repr=False)
    truth_kept: np.ndarray = field(repr=False)

    @property
    def mean_city_f1(self) -> float:
        return float(np.mean([c.f1 for c in self.cities.values()])) if self.cities else 0.0

    def to_json(self) -> dict:
        return {
            "rules": self.rules,
            "overall": self.overall.as_dict(),
            "mean_city_f1": self.mean_city_f1,
            "cities": {name: c.as_dict() for name, c in sorted(self.cities.items())},
        }


def _repair(geoms: np.ndarray) -> np.ndarray:
    """Make invalid polygons valid, keeping only polygonal parts (spacenet rules)."""
    out = geoms.copy()
    invalid = np.flatnonzero(~shapely.is_valid(geoms) & ~shapely.is_empty(geoms))
    if invalid.size:
        out[invalid] = shapely.make_valid(geoms[invalid], method="structure",
                                          keep_collapsed=False)
        logger.debug("repaired %d invalid polygon(s)", invalid.size)
    return out


def _same_image_box_pairs(props: np.ndarray, truths: np.ndarray, p_img: np.ndarray,
                          t_img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(proposal, truth) index pairs of the same image whose bounding boxes intersect.

    All tiles share one pixel frame, so a single STRtree over raw boxes would pair every image
    with every other. The boxes are shifted along x by (image code x frame width) instead, which
    keeps images apart in one tree. props/truths: (P,)/(T,) non-empty geometries.
    """
    pb, tb = shapely.bounds(props), shapely.bounds(truths)  # (P, 4), (T, 4)
    lo = min(pb[:, 0].min(), tb[:, 0].min())
    span = max(pb[:, 2].max(), tb[:, 2].max()) - lo + 1.0
    p_off, t_off = (p_img * span - lo), (t_img * span - lo)
    tree = shapely.STRtree(shapely.box(tb[:, 0] + t_off, tb[:, 1], tb[:, 2] + t_off, tb[:, 3]))
    pi, ti = tree.query(shapely.box(pb[:, 0] + p_off, pb[:, 1], pb[:, 2] + p_off, pb[:, 3]))
    same = p_img[pi] == t_img[ti]  # guards against float rounding at the tile seams
    return pi[same], ti[same]


def _candidate_pairs(props: np.ndarray, truths: np.ndarray, p_img: np.ndarray,
                     t_img: np.ndarray, rules: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (proposal, truth) of the same image that intersect, with their IoU.

    props: (P,) geometries, truths: (T,) geometries, p_img/t_img: (P,)/(T,) image codes; no
    geometry is empty (the area filter removed those). Returns (pi, ti, iou), each (K,).
    """
    if len(props) == 0 or len(truths) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    pi, ti = _same_image_box_pairs(props, truths, p_img, t_img)
    if rules == "solaris":
        # An invalid truth gets IoU 0 without any overlay (GEOS could raise on it).
        keep = shapely.is_valid(truths[ti])
        pi, ti = pi[keep], ti[keep]
    keep = shapely.intersects(props[pi], truths[ti])
    pi, ti = pi[keep], ti[keep]
    inter = shapely.area(shapely.intersection(props[pi], truths[ti]))
    if rules == "solaris":
        union = shapely.area(shapely.union(props[pi], truths[ti]))
    else:
        union = shapely.area(props[pi]) + shapely.area(truths[ti]) - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return pi, ti, iou


def _proposal_order(conf: np.ndarray, rules: str) -> np.ndarray:
    """Processing order of proposals: descending confidence, NaN last."""
    if rules == "solaris":
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


def score(truth: pd.DataFrame, proposals: pd.DataFrame, rules: str = "spacenet",
          iou_threshold: float = IOU_THRESHOLD, min_area: float = MIN_AREA) -> ScoreResult:
    """Score proposals against truth (DataFrames from ``read_truth_csv``/``read_proposal_csv``).

    truth: T rows with ImageId, geometry. proposals: P rows with ImageId, geometry, Confidence.
    """
    if rules not in RULES:
        raise ValueError(f"rules={rules!r} is not one of {RULES}")
    t_geom = np.asarray(truth["geometry"].to_numpy(), dtype=object)
    p_geom = np.asarray(proposals["geometry"].to_numpy(), dtype=object)
    t_ids = truth["ImageId"].astype(str).to_numpy()
    p_ids = proposals["ImageId"].astype(str).to_numpy()
    conf = proposals["Confidence"].to_numpy(dtype=np.float64)

    if rules == "spacenet":
        t_geom, p_geom = _repair(t_geom), _repair(p_geom)
        t_kept = shapely.area(t_geom) >= min_area
        p_kept = shapely.area(p_geom) >= min_area
        p_eval = p_geom
    else:
        t_kept = shapely.area(t_geom) >= min_area
        p_area = shapely.area(p_geom)
        p_kept = p_area > min_area
        invalid = ~shapely.is_valid(p_geom)
        p_eval = p_geom.copy()
        if invalid.any():
            p_eval[invalid] = shapely.buffer(p_geom[invalid], 0.0)

    images, codes = np.unique(np.concatenate([t_ids, p_ids]), return_inverse=True)
    t_code, p_code = codes[: len(t_ids)], codes[len(t_ids):]

    t_idx, p_idx = np.flatnonzero(t_kept), np.flatnonzero(p_kept)
    pi, ti, iou = _candidate_pairs(p_eval[p_idx], t_geom[t_idx], p_code[p_idx], t_code[t_idx],
                                   rules)
    pi, ti = p_idx[pi], t_idx[ti]  # back to row indices

    best_iou = np.zeros(len(p_geom))
    np.maximum.at(best_iou, pi, iou)
    order = _proposal_order(conf, rules)
    order = order[p_kept[order]]
    match = _greedy_match(order, pi, ti, iou, len(p_geom), len(t_geom), iou_threshold)
    t_matched = np.zeros(len(t_geom), dtype=bool)
    t_matched[match[match >= 0]] = True

    n_img = len(images)
    tp = np.bincount(p_code[match >= 0], minlength=n_img)
    fp = np.bincount(p_code[p_kept & (match < 0)], minlength=n_img)
    fn = np.bincount(t_code[t_kept & ~t_matched], minlength=n_img)
    per_image = _per_image_table(images, tp, fp, fn)
    cities = {
        city: Counts(int(g.tp.sum()), int(g.fp.sum()), int(g.fn.sum()))
        for city, g in per_image.groupby("city", sort=True)
    }
    overall = Counts(int(tp.sum()), int(fp.sum()), int(fn.sum()))
    return ScoreResult(rules, overall, cities, per_image, best_iou, match, p_kept, t_matched,
                       t_kept)


def _per_image_table(images: np.ndarray, tp: np.ndarray, fp: np.ndarray,
                     fn: np.ndarray) -> pd.DataFrame:
    table = pd.DataFrame({"ImageId": images, "city": [city_of(i) for i in images],
                          "tp": tp, "fp": fp, "fn": fn})
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
        f1 = np.where(precision * recall > 0,
                      2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    table["precision"], table["recall"], table["f1"] = precision, recall, f1
    return table


def score_csv(truth_csv: str | Path, proposal_csv: str | Path, rules: str = "spacenet",
              iou_threshold: float = IOU_THRESHOLD, min_area: float = MIN_AREA) -> ScoreResult:
    """Read both CSVs and score them (see the module docstring for the rules)."""
    truth = read_truth_csv(truth_csv)
    proposals = read_proposal_csv(proposal_csv)
    unknown = set(proposals["ImageId"]) - set(truth["ImageId"])
    if unknown:
        logger.warning(
            "%d ImageId(s) in %s are not in %s (e.g. %s): all their proposals count as FP",
            len(unknown), proposal_csv, truth_csv, sorted(unknown)[0],
        )
    return score(truth, proposals, rules=rules, iou_threshold=iou_threshold, min_area=min_area)
