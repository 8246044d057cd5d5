"""SpaceNet CSV files: truth and proposal CSVs read with shapely, proposal CSVs written the way
the SpaceNet 2 tester reads them. Torch-free; used by data (labels), evaluation (scoring) and
inference (outputs). The tester's own reading of these files is
:mod:`mnc_d2.evaluation.tester_polygons`.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import shapely

from ..utils.atomic import atomic_write

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

TRUTH_COLUMNS = ("ImageId", "BuildingId", "PolygonWKT_Pix")
PROPOSAL_COLUMNS = ("ImageId", "BuildingId", "PolygonWKT_Pix", "Confidence")
PROPOSAL_HEADER = PROPOSAL_COLUMNS


class SpaceNetCSVError(ValueError):
    """A truth or proposal CSV that cannot be scored (for the tester rules: a line the tester
    cannot read, where it stops); the message names file, line and the expected format."""


# --- reading ----------------------------------------------------------------------------------


def _read_table(path: str | Path, required: tuple[str, ...], kind: str) -> pd.DataFrame:
    import pandas as pd

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
    import pandas as pd

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
    """Read a SpaceNet truth CSV with shapely -> DataFrame(ImageId, BuildingId, geometry).

    For dataset labels and the solaris rules; ``rules="spacenet"`` reads files as the tester
    does (:func:`.tester_polygons.read_polygon_csv`).
    """
    import pandas as pd

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
    import pandas as pd

    frame = _read_table(path, PROPOSAL_COLUMNS, "proposal")
    conf = pd.to_numeric(frame["Confidence"], errors="coerce")
    bad = conf.isna() & frame["Confidence"].notna() & (frame["Confidence"].astype(str) != "nan")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        value = frame["Confidence"].iloc[row]
        hint = ("; that line repeats the header (CSVs joined with cat?): keep only the first "
                "header line, or score a tools/predict.py folder with --predictions"
                if str(value).strip() == "Confidence" else "")
        raise SpaceNetCSVError(
            f"proposal CSV {path}, line {row + 2}: Confidence {value!r} is not a number; "
            f"expected a float such as 0.87{hint}"
        )
    if conf.isna().any():
        logger.warning("proposal CSV %s: %d NaN confidence(s) sort last", path, conf.isna().sum())
    _warn_duplicates(frame, list(PROPOSAL_COLUMNS), path, "proposal")
    geoms = parse_wkt_column(frame["PolygonWKT_Pix"], path, "proposal")
    return pd.DataFrame(
        {"ImageId": frame["ImageId"].astype(str).to_numpy(), "BuildingId": frame["BuildingId"],
         "geometry": geoms, "Confidence": conf.to_numpy(dtype=np.float64)}
    )


# --- writing ----------------------------------------------------------------------------------


def wkt_for_tester(geom, precision: int = 2) -> list[str]:
    """Pixel geometry -> WKT text the tester reads as intended, one string per polygon part.

    Rings are joined by ``),(`` without a space (``shapely.to_wkt`` writes ``), (``, which the
    tester would read as one ring); a MultiPolygon yields one polygon per part, since the tester
    reads only the first polygon of a MULTIPOLYGON.
    """
    out = []
    for part in shapely.get_parts(geom):
        if part.is_empty or part.geom_type != "Polygon":
            continue
        rings = shapely.to_wkt(shapely.get_rings(part), rounding_precision=precision,
                               trim=False, output_dimension=2)  # "LINEARRING (x y, ...)"
        out.append("POLYGON ((" + "),(".join(r[len("LINEARRING ("):-1] for r in rings) + "))")
    return out


def write_proposal_csv(path: str | Path,
                       predictions: Mapping[str, Sequence[tuple[object, float]]],
                       precision: int = 2) -> int:
    """Write ``{ImageId: [(pixel polygon, confidence), ...]}`` as a SpaceNet proposal CSV.

    Polygons are written as the SpaceNet 2 tester reads them (:func:`wkt_for_tester`: rings
    joined by ``),(``; a MultiPolygon as one row per part, since the tester stops on a
    MULTIPOLYGON proposal). An image without polygons gets the ``ImageId,-1,POLYGON EMPTY,1.0``
    row SpaceNet uses. BuildingIds number the rows of an image from 0 in descending confidence.
    Returns the number of polygon rows written.
    """
    rows = 0
    with atomic_write(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(PROPOSAL_HEADER)
        for image_id, items in predictions.items():
            ordered = sorted(items, key=lambda item: -float(item[1]))
            texts = [(text, conf) for geom, conf in ordered
                     for text in wkt_for_tester(geom, precision)]
            if not texts:  # no polygons, or only empty ones
                writer.writerow([image_id, -1, "POLYGON EMPTY", 1.0])
            for building_id, (text, conf) in enumerate(texts):
                writer.writerow([image_id, building_id, text, f"{conf:.6f}"])
                rows += 1
    return rows


def spacenet_wkt(geom, style: str = "ogr") -> str:
    """SpaceNet's WKT of a summary CSV, z = 0 and no 'Z' tag.

    ``ogr`` (SpaceNet 1 and 2, written by GDAL/OGR): no space after commas,
    'POLYGON ((x y 0,x y 0,...),(hole))', so the Java tester reads a hole as a hole.
    ``shapely`` (SpaceNet 4's label tooling): 'POLYGON ((x y 0, x y 0, ...), (hole))', whose
    ``), (`` the tester reads as one ring with the exterior (its real behaviour on such files).
    """
    if style not in ("ogr", "shapely"):
        raise ValueError(f"style {style!r}: use 'ogr' or 'shapely'")
    text = shapely.to_wkt(shapely.force_3d(geom), rounding_precision=6, output_dimension=3)
    text = text.replace("POLYGON Z ", "POLYGON ", 1)
    return text.replace(", ", ",") if style == "ogr" else text


def write_summary_csv(path: Path, rows: list, header=("ImageId", "BuildingId", "PolygonWKT_Pix",
                                                      "PolygonWKT_Geo")) -> None:
    with atomic_write(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
