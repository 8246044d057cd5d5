"""mnc_d2.formats: the SpaceNet proposal CSV writer (atomic, tester format) and GeoJSON output."""

from __future__ import annotations

import csv
import json

import pytest
from shapely.geometry import box

from mnc_d2.formats.geojson import write_geojson
from mnc_d2.formats.spacenet_csv import write_proposal_csv


def test_proposal_csv_writer(tmp_path):
    path = tmp_path / "out" / "proposals.csv"
    n = write_proposal_csv(path, {"AOI_2_Vegas_img1": [(box(0, 0, 10, 10), 0.4), (box(20, 20, 30, 30), 0.9)],
                                  "AOI_2_Vegas_img2": []})
    assert n == 2
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["ImageId", "BuildingId", "PolygonWKT_Pix", "Confidence"]
    assert rows[1][0:2] == ["AOI_2_Vegas_img1", "0"] and rows[1][3] == "0.900000"
    assert rows[3] == ["AOI_2_Vegas_img2", "-1", "POLYGON EMPTY", "1.0"]
    assert not list(tmp_path.joinpath("out").glob(".*tmp"))


def test_atomic_write_leaves_nothing_on_crash(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("old")

    class Boom:
        def __iter__(self):
            yield (box(0, 0, 1, 1), 0.5)
            raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_proposal_csv(path, {"AOI_1_X_img1": Boom()})
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]


def test_geojson_names_crs(tmp_path):
    path = tmp_path / "buildings.geojson"
    n = write_geojson(path, [box(500000, 3700000, 500010, 3700010)], "EPSG:32616",
                      [{"score": 0.9, "image_id": "x"}])
    assert n == 1
    data = json.loads(path.read_text())
    assert "32616" in data["crs"]["properties"]["name"]
    assert data["features"][0]["properties"]["score"] == 0.9
    # the layer a GIS shows is the file's name, not the temporary file's written first
    assert data["name"] == "buildings"


def test_spacenet2_truth_holes_are_read_as_holes_by_the_tester_rules(tmp_path):
    """Synthetic SpaceNet 2 summary CSVs write holes as SpaceNet 2 does ('),(', OGR's WKT), so the
    tester-faithful reader keeps a courtyard and its exact prediction matches it."""
    from shapely.geometry import Polygon

    from mnc_d2.evaluation.spacenet_metric import score_csv
    from mnc_d2.formats.spacenet_csv import spacenet_wkt, write_proposal_csv, write_summary_csv

    courtyard = Polygon([(10, 10), (60, 10), (60, 60), (10, 60)],
                        [[(25, 25), (45, 25), (45, 45), (25, 45)]])
    proposals = tmp_path / "proposals.csv"
    write_proposal_csv(proposals, {"AOI_2_Vegas_img1": [(courtyard, 0.9)]})
    text = spacenet_wkt(courtyard)
    assert "0),(" in text and ", " not in text
    truth = tmp_path / "truth.csv"
    write_summary_csv(truth, [["AOI_2_Vegas_img1", 0, text, text]])
    result = score_csv(truth, proposals, full_iou=True)
    assert (result.overall.tp, result.overall.fp, result.overall.fn) == (1, 0, 0)
    assert result.proposal_iou[0] > 0.999  # the hole is read as a hole on both sides
