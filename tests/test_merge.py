"""tools/merge_footprints.py: one city-wide GeoParquet from a prediction folder, one building
where scenes meet (abutting tiles with a gap at the seam, overlapping scenes, misregistered
acquisitions), damaged and grid-less files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS

from mnc_d2.inference.merge import merge_footprints
from mnc_d2.inference.scenes import write_buildings_parquet
from mnc_d2.inference.sources import SceneInfo

ROOT = Path(__file__).resolve().parents[1]
CRS_UTM, X0, Y0 = "EPSG:32611", 500000.0, 4000000.0
PX = 0.5  # metres per pixel of the scenes below: the seam tolerance is 6 px = 3 m


def _grid(x1: float, x2: float, y1: float = 0.0, y2: float = 100.0) -> dict:
    """predict.py's record of a scene covering x1..x2, y1..y2 metres from (X0, Y0)."""
    return {"crs": CRS.from_string(CRS_UTM).to_wkt(),
            "transform": list(Affine(PX, 0, X0 + x1, 0, -PX, Y0 + y2))[:6],
            "width": round((x2 - x1) / PX), "height": round((y2 - y1) / PX)}


def _box(x1, y1, x2, y2):
    return shapely.box(X0 + x1, Y0 + y1, X0 + x2, Y0 + y2)


def _write(folder: Path, name: str, geoms: list, scores=None, grid=None, info=None, run=None):
    write_buildings_parquet(folder / "buildings" / f"{name}.parquet", name, geoms,
                            scores or [0.5] * len(geoms), CRS_UTM, info, run, grid)


def _city(path: Path) -> gpd.GeoDataFrame:
    return gpd.read_parquet(path).to_crs(CRS_UTM)


def test_merge_footprints_unions_buildings_across_scene_borders(tmp_path):
    # scene A covers x 0..100, B 80..180: a building cut by each scene's edge is reassembled,
    # one that both scenes see whole is kept once (B's, the better score)
    scene_a = [_box(10, 10, 20, 20), _box(70, 20, 100, 40), _box(85, 60, 95, 70)]
    scene_b = [_box(80, 20, 120, 40), _box(85, 60, 95, 70), _box(150, 50, 160, 60)]
    folder = tmp_path / "pred"
    run = {"weights_sha256": "abc", "score_thresh": 0.5}
    _write(folder, "A", scene_a, [0.9, 0.8, 0.6], _grid(0, 100),
           SceneInfo(datetime="2017-05-01T10:00:00Z", view_angle=12.5), run)
    _write(folder, "B", scene_b, [0.7, 0.95, 0.5], _grid(80, 180),
           SceneInfo(datetime="2018-06-02T11:30:00Z"), run)
    _write(folder, "C", [], grid=_grid(180, 280))  # no buildings
    stats = merge_footprints(folder, tmp_path / "city.parquet")
    city = gpd.read_parquet(tmp_path / "city.parquet")
    assert stats == {"scenes": 3, "empty_scenes": 1, "read": 6, "written": 4, "merged_groups": 2,
                     "unreadable": {}, "no_grid": []}
    assert city.crs.to_epsg() == 4326 and city.building_id.tolist() == [0, 1, 2, 3]
    metric = city.to_crs(CRS_UTM)
    areas = sorted(np.round(metric.area.to_numpy()).tolist())
    assert areas == [100.0, 100.0, 100.0, 1000.0]  # cut building 70..120 x 20..40 reassembled
    assert np.allclose(np.sort(city.area_m2.to_numpy()), [100, 100, 100, 1000], rtol=1e-3)
    merged = city[city.scenes == "A,B"].sort_values("score")
    assert len(merged) == 2 and merged.score.tolist() == [0.8, 0.95]  # the higher
    # provenance: the best-scoring part's date and view angle (NaN: B's item gave none)
    assert [t.isoformat() for t in merged.datetime] == ["2017-05-01T10:00:00+00:00",
                                                        "2018-06-02T11:30:00+00:00"]
    assert merged.view_angle.iloc[0] == 12.5 and np.isnan(merged.view_angle.iloc[1])
    assert json.loads(pq.read_schema(tmp_path / "city.parquet").metadata[b"mnc_d2"]) == run


def test_merge_footprints_along_a_row_of_three_scenes(tmp_path):
    """Seams between A|B and B|C: each cut building is reassembled once, whatever the order in
    which the scenes are visited."""
    def b(x1, x2):
        return _box(x1, 10, x2, 20)

    folder = tmp_path / "pred"
    parts = {"A": ([b(0, 10), b(70, 100)], _grid(0, 100, 0, 30)),
             "B": ([b(80, 120), b(150, 200)], _grid(80, 200, 0, 30)),
             "C": ([b(180, 230), b(290, 300)], _grid(180, 300, 0, 30))}
    for name, (geoms, grid) in parts.items():
        _write(folder, name, geoms, grid=grid)
    stats = merge_footprints(folder, tmp_path / "city.parquet")
    city = _city(tmp_path / "city.parquet")
    widths = sorted(np.round(city.bounds.maxx - city.bounds.minx).astype(int).tolist())
    assert widths == [10, 10, 50, 80]  # 70..120 and 150..230 reassembled, the ends untouched
    assert stats["merged_groups"] == 2 and stats["written"] == 4


def test_abutting_tiles_cut_buildings_are_joined_across_the_seams_gap(tmp_path):
    """Tiles that abut (SpaceNet's grid): a building's pieces stop short of the seam by a pixel
    or a few and never overlap; they are one building again, the gap filled. Neighbours on
    either side of the seam, and a building near the seam on one side only, stay as they are."""
    folder = tmp_path / "pred"
    in_a = [_box(60, 10, 99.4, 20),   # cut: 0.6 m short of the seam at x = 100
            _box(80, 40, 99.5, 50),   # another building, across from b's below
            _box(90, 70, 97.5, 80)]   # near the seam, nothing across it
    in_b = [_box(101.0, 10.5, 130, 20),  # the rest of the first, 1 m beyond the seam
            _box(100.5, 52, 120, 62)]    # 2 m further north than a's: another building
    _write(folder, "A", in_a, [0.9, 0.8, 0.7], _grid(0, 100))
    _write(folder, "B", in_b, [0.6, 0.5], _grid(100, 200))
    stats = merge_footprints(folder, tmp_path / "city.parquet")
    city = _city(tmp_path / "city.parquet")
    assert stats["written"] == 4 and stats["merged_groups"] == 1
    joined = city[city.scenes == "A,B"].geometry.iloc[0]
    assert joined.geom_type == "Polygon" and not list(joined.interiors)
    assert np.allclose(joined.bounds, (X0 + 60, Y0 + 10, X0 + 130, Y0 + 20))
    # the two pieces and the gap between them, inside their convex hull
    pieces = [_box(60, 10, 99.4, 20), _box(99.4, 10.5, 101, 20), _box(101, 10.5, 130, 20)]
    assert shapely.covers(joined.buffer(1e-6), shapely.union_all(pieces))
    assert shapely.covers(shapely.convex_hull(shapely.union_all(pieces)).buffer(1e-6), joined)
    assert city[city.scenes == "A,B"].score.tolist() == [0.9]
    alone = sorted(np.round(city[city.scenes != "A,B"].area, 2).tolist())
    assert alone == [75.0, 195.0, 195.0]  # unchanged: 7.5 x 10, 19.5 x 10, 19.5 x 10
    # with no tolerance the pieces stay apart, as the scenes' polygons do not overlap
    assert merge_footprints(folder, tmp_path / "zero.parquet", tolerance_px=0)["written"] == 5


def test_overlapping_acquisitions_keep_one_whole_copy_and_never_chain_neighbours(tmp_path):
    """Two acquisitions overlap on a terrace of houses 1 m apart, misregistered by 1.5 m: each
    house is kept once, as one acquisition's whole polygon (not the union of both copies, 1.5 m
    wider than the house), and neighbours that overlap by the misregistration stay apart."""
    folder = tmp_path / "pred"
    houses = [_box(60 + 6 * k, 40, 65 + 6 * k, 50) for k in range(5)]  # x 60..89, 1 m gaps
    shifted = [shapely.affinity.translate(h, 1.5, 0) for h in houses]
    _write(folder, "A", houses, [0.9, 0.6, 0.9, 0.6, 0.9], _grid(0, 100))
    _write(folder, "B", shifted, [0.7, 0.8, 0.7, 0.8, 0.7], _grid(50, 150))
    stats = merge_footprints(folder, tmp_path / "city.parquet")
    city = _city(tmp_path / "city.parquet").sort_values("score")
    assert stats["written"] == 5 and stats["merged_groups"] == 5
    assert np.allclose(city.area, 50.0)  # a house, not a union of two copies
    assert city.score.tolist() == [0.8, 0.8, 0.9, 0.9, 0.9]  # the better copy of each
    assert set(city.scenes) == {"A,B"}


def test_a_whole_polygon_stands_for_a_building_over_a_better_scoring_piece(tmp_path):
    """A sees 3 m of a building at its edge, B all of it: B's polygon is the building, with
    B's score, though A's piece scores higher (a piece's score is a piece's)."""
    folder = tmp_path / "pred"
    _write(folder, "A", [_box(97, 75, 100, 85)], [0.99], _grid(0, 100))
    _write(folder, "B", [_box(92, 75, 110, 85)], [0.6], _grid(80, 180))
    merge_footprints(folder, tmp_path / "city.parquet")
    city = _city(tmp_path / "city.parquet")
    assert len(city) == 1 and city.score.tolist() == [0.6] and city.scenes.tolist() == ["A,B"]
    assert city.area.iloc[0] == pytest.approx(180.0)


def test_a_building_cut_by_a_nodata_collar_is_a_piece_as_at_a_grid_edge(tmp_path):
    """A's grid reaches x = 100 but its data stops at x = 60 (a collar, recorded by predict.py);
    a building across that line is a piece in A, so B's whole polygon stands for it though A's
    piece scores higher. Without the record A's piece (40 m from A's grid edge) counted as
    whole and won."""
    folder = tmp_path / "pred"
    collared = dict(_grid(0, 100), data=_box(0, 0, 60, 100).wkt)
    _write(folder, "A", [_box(52, 40, 59.5, 50)], [0.95], collared)
    _write(folder, "B", [_box(52, 40, 70, 50)], [0.6], _grid(40, 200))
    merge_footprints(folder, tmp_path / "city.parquet")
    city = _city(tmp_path / "city.parquet")
    assert len(city) == 1 and city.score.tolist() == [0.6] and city.scenes.tolist() == ["A,B"]
    assert city.area.iloc[0] == pytest.approx(180.0)
    # a building wholly inside A's data stays A's, whole
    _write(folder, "A", [_box(52, 40, 59.5, 50), _box(10, 10, 20, 20)], [0.95, 0.9], collared)
    merge_footprints(folder, tmp_path / "city2.parquet")
    assert len(_city(tmp_path / "city2.parquet")) == 2


def test_a_scene_file_without_a_grid_is_opened_through_the_manifest(tmp_path):
    """Folders written before predict.py recorded the scenes' grids: the scene is opened
    through the manifest; where it cannot be, its buildings' bounding box stands for it, said
    in a warning and in the counts."""
    folder = tmp_path / "pred"
    grids = {"A": _grid(0, 100), "B": _grid(100, 200)}
    for name, geoms in (("A", [_box(60, 10, 99.4, 20)]), ("B", [_box(101, 10, 130, 20)])):
        _write(folder, name, geoms)  # no grid recorded
        grid = grids[name]
        with rasterio.open(tmp_path / f"{name}.tif", "w", driver="GTiff", width=grid["width"],
                           height=grid["height"], count=1, dtype="uint8", crs=CRS_UTM,
                           transform=Affine(*grid["transform"])) as dst:
            dst.write(np.zeros((1, grid["height"], grid["width"]), np.uint8))
    import pandas as pd

    pd.DataFrame({"scene": ["A", "B"], "path": [str(tmp_path / "A.tif"),
                                                str(tmp_path / "B.tif")]}).to_parquet(
        folder / "manifest.parquet")
    stats = merge_footprints(folder, tmp_path / "city.parquet")
    assert stats["written"] == 1 and stats["no_grid"] == []
    (tmp_path / "B.tif").unlink()  # moved away: B's extent is its building's box
    stats = merge_footprints(folder, tmp_path / "city2.parquet")
    assert stats["no_grid"] == ["B"] and stats["written"] == 1  # B's box edge is the seam


def test_merge_leaves_out_a_damaged_scene_file_and_merges_a_run_without_buildings(tmp_path):
    folder = tmp_path / "pred"
    for k, name in enumerate("ABC"):
        _write(folder, name, [_box(200 * k, 0, 200 * k + 10, 10)], [0.9],
               _grid(200 * k - 50, 200 * k + 50))
    damaged = folder / "buildings" / "B.parquet"
    damaged.write_bytes(damaged.read_bytes()[:100])  # cut short, as by an interrupted copy
    tool = [sys.executable, str(ROOT / "tools" / "merge_footprints.py"), str(folder), "--out",
            str(tmp_path / "city.parquet")]
    run = subprocess.run(tool, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr  # the others merged, the damaged one named
    assert f"not merged: {damaged} cannot be read" in run.stderr
    assert "run tools/predict.py again with the same --output" in run.stderr
    city = gpd.read_parquet(tmp_path / "city.parquet")
    assert sorted(city.scenes) == ["A", "C"]
    for name in "AC":  # every file damaged: an error naming the folder
        (folder / "buildings" / f"{name}.parquet").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="none of the 3 per-scene GeoParquet files"):
        merge_footprints(folder, tmp_path / "none.parquet")
    # a run that found no building anywhere merges into an empty city, not an error
    empty = tmp_path / "empty"
    for name in "AB":
        _write(empty, name, [])
    stats = merge_footprints(empty, tmp_path / "new" / "folder" / "empty.parquet")
    assert stats["written"] == 0 and stats["empty_scenes"] == 2
    assert len(gpd.read_parquet(tmp_path / "new" / "folder" / "empty.parquet")) == 0


def test_seam_options_out_of_range_are_refused(tmp_path):
    _write(tmp_path / "pred", "A", [_box(0, 0, 10, 10)], grid=_grid(0, 100))
    for options in ({"tolerance_px": -1}, {"min_overlap": 0}, {"min_overlap": 1.5}):
        with pytest.raises(ValueError, match="seam tolerance"):
            merge_footprints(tmp_path / "pred", tmp_path / "city.parquet", **options)
    tool = [sys.executable, str(ROOT / "tools" / "merge_footprints.py"), str(tmp_path / "pred"),
            "--out", str(tmp_path / "city.parquet"), "--seam-tolerance", "-1"]
    run = subprocess.run(tool, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "--seam-tolerance" in run.stderr
    assert not (tmp_path / "city.parquet").exists()


def test_scene_files_are_read_as_geopandas_reads_them(tmp_path):
    """predict.py's files (EPSG:4326) are read without geopandas' per-file CRS parsing, to the
    same frame; a file in another CRS (not written by predict.py) is read and reprojected."""
    from mnc_d2.inference.merge import read_scene_file

    _write(tmp_path, "A", [_box(0, 0, 10, 10), _box(20, 0, 30, 10)], [0.9, 0.8],
           info=SceneInfo(datetime="2017-05-01T10:00:00Z", view_angle=12.5))
    path = tmp_path / "buildings" / "A.parquet"
    ours, theirs = read_scene_file(path), gpd.read_parquet(path)
    assert ours.crs == theirs.crs and list(ours.columns) == list(theirs.columns)
    assert ours.drop(columns="geometry").equals(theirs.drop(columns="geometry"))
    assert ours.geometry.geom_equals_exact(theirs.geometry, 0).all()
    other = tmp_path / "utm.parquet"
    theirs.to_crs(CRS_UTM).to_parquet(other)
    moved = read_scene_file(other)
    assert moved.crs.to_epsg() == 4326
    assert moved.geometry.geom_equals_exact(theirs.geometry, 1e-9).all()
