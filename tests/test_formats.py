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
