"""tools/score.py --predictions: a predict.py output folder scored against truth CSVs or map
files in any CRS, with the counts the SpaceNet CSVs of the same polygons get."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio
import shapely

from mnc_d2.evaluation.folder_scoring import FolderInputError, score_folder
from mnc_d2.geometry.polygons import pixel_to_map
from test_viewer import SCORES, _prediction_folder

ROOT = Path(__file__).resolve().parents[1]


def _truth(tmp_path: Path):
    """The same truth as SpaceNet CSV rows (pixels, by ImageId) and as map polygons: per scene
    buildings 1 and 3 of the four predicted exactly, one building nothing found; building 2's
    prediction and the below-threshold building 0 are not in the truth."""
    rows, geo = [], []
    for k in range(2):
        pix = [shapely.box(20 + 35 * j, 30, 45 + 35 * j, 60) for j in range(4)]
        kept = [pix[1], pix[3], shapely.box(100, 100, 130, 130)]
        rows += [f's{k},{i},"{t.wkt}","{t.wkt}"' for i, t in enumerate(kept)]
        with rasterio.open(tmp_path / "scenes" / f"s{k}.tif") as src:
            transform = src.transform
        geo += [pixel_to_map(t, transform) for t in kept]
    csv = tmp_path / "truth.csv"
    csv.write_text("ImageId,BuildingId,PolygonWKT_Pix,PolygonWKT_Geo\n" + "\n".join(rows) + "\n")
    return csv, gpd.GeoDataFrame(geometry=geo, crs="EPSG:4326")


def test_a_folder_scores_as_its_csvs_do_in_any_crs(tmp_path):
    from mnc_d2.evaluation.spacenet_metric import score_csv
    from mnc_d2.formats.spacenet_csv import write_proposal_csv

    folder = _prediction_folder(tmp_path)
    csv, geo = _truth(tmp_path)
    props = {f"s{k}": [(shapely.box(20 + 35 * j, 30, 45 + 35 * j, 60), s)
                       for j, s in enumerate(SCORES) if s >= 0.5] for k in range(2)}
    write_proposal_csv(tmp_path / "props.csv", props)
    reference = score_csv(str(csv), str(tmp_path / "props.csv"), group_by="none")
    expected = (reference.overall.tp, reference.overall.fp, reference.overall.fn)
    assert expected == (4, 2, 2)
    files = {"csv": [str(csv)]}
    for name, crs in (("wgs84", "EPSG:4326"), ("mercator", "EPSG:3857"),
                      ("state_plane_feet", "EPSG:2263")):
        path = tmp_path / f"truth_{name}.geojson"
        geo.to_crs(crs).to_file(path)
        files[name] = [str(path)]
    geo.to_crs("EPSG:32611").to_parquet(tmp_path / "truth.parquet")
    files["geoparquet_utm"] = [str(tmp_path / "truth.parquet")]
    for name, truth in files.items():
        result, shapes = score_folder(folder, truth, polygon_metrics=True)
        assert (result.overall.tp, result.overall.fp, result.overall.fn) == expected, name
        # the matched pairs are the exact truth boxes: IoU 1, four corners each
        assert shapes["all"]["pairs"] == 4 and shapes["all"]["iou"] == pytest.approx(1, abs=1e-6)
        assert shapes["all"]["n_ratio"] == 1.0, name
        assert shapes["all"]["polis"] < 1e-3, name  # metres
    # the command line: the table, JSON, per-image rows
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "score.py"), "--truth",
                          *files["mercator"], "--predictions", str(folder), "--json",
                          "--per-image", str(tmp_path / "per_image.csv")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["overall"]["tp"], report["overall"]["fp"], report["overall"]["fn"]) == (4, 2, 2)
    assert (tmp_path / "per_image.csv").read_text().count("\ns") == 2  # one row per scene


def test_bad_truth_and_folders_say_why(tmp_path):
    folder = _prediction_folder(tmp_path)
    with pytest.raises(FolderInputError, match="not a tools/predict.py output folder"):
        score_folder(tmp_path, ["x.geojson"])
    _, geo = _truth(tmp_path)
    geo.set_crs(None, allow_override=True).to_parquet(tmp_path / "nocrs.parquet")
    with pytest.raises(FolderInputError, match="nocrs.parquet has no CRS"):
        score_folder(folder, [str(tmp_path / "nocrs.parquet")])
    with pytest.raises(FolderInputError, match="not both"):
        score_folder(folder, [str(tmp_path / "nocrs.parquet"), "t.csv"])
    # truth somewhere else: every building a false positive, said in a warning
    far = geo.set_geometry(geo.translate(10, 10))
    far.to_file(tmp_path / "far.geojson")
    result, _ = score_folder(folder, [str(tmp_path / "far.geojson")])
    assert (result.overall.tp, result.overall.fp, result.overall.fn) == (0, 6, 0)
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "score.py"), "--truth",
                          str(tmp_path / "nocrs.parquet"), "--predictions", str(folder)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "nocrs.parquet has no CRS" in out.stderr


def test_a_damaged_scene_file_is_left_out_and_the_others_are_scored(tmp_path):
    from mnc_d2.viewer.site import build_site

    folder = _prediction_folder(tmp_path)
    csv, _ = _truth(tmp_path)
    damaged = folder / "buildings" / "s1.parquet"
    damaged.write_bytes(damaged.read_bytes()[:200])  # cut short, as by an interrupted copy
    result, _ = score_folder(folder, [str(csv)])
    # s0 alone (half of the whole folder's 4 / 2 / 2); s1's truth is not counted as missed
    assert (result.overall.tp, result.overall.fp, result.overall.fn) == (2, 1, 1)
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "score.py"), "--truth", str(csv),
                          "--predictions", str(folder)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and f"{damaged} cannot be read" in out.stderr, out.stderr
    # the map shows it as a failed scene with the reason, its truth unmatched
    meta = build_site(folder, tmp_path / "site", truth=[str(csv)])
    s1 = next(s for s in meta["scenes"] if s["scene"] == "s1")
    assert s1["status"] == "failed" and "predict the scene again" in s1["error"]
    assert meta["truth_counts"] == {"TP": 2, "FP": 1, "FN": 1} and meta["buildings"] == 4


def test_map_truth_under_a_nodata_collar_is_not_a_miss(tmp_path):
    """s0's file records that its data ends at row 95 (a collar below, as predict.py records
    it): the truth building at rows 100-130 lies where the model saw no imagery and is scored
    neither as found nor as missed, by tools/score.py and by the map; SpaceNet CSV truth (the
    tester's rules, per ImageId) is scored as given."""
    import geopandas as gpd
    from rasterio.crs import CRS

    from mnc_d2.inference.scenes import write_buildings_parquet
    from mnc_d2.viewer.site import build_site

    folder = _prediction_folder(tmp_path)
    csv, geo = _truth(tmp_path)
    geo.to_file(tmp_path / "truth.geojson")
    own = folder / "buildings" / "s0.parquet"
    found = gpd.read_parquet(own)
    with rasterio.open(tmp_path / "scenes" / "s0.tif") as src:
        grid = {"crs": CRS.from_epsg(4326).to_wkt(), "transform": list(src.transform)[:6],
                "width": src.width, "height": src.height,
                "data": pixel_to_map(shapely.box(0, 0, src.width, 95), src.transform).wkt}
    write_buildings_parquet(own, "s0", list(found.geometry), list(found.score), "EPSG:4326",
                            grid=grid)
    result, _ = score_folder(folder, [str(tmp_path / "truth.geojson")])
    assert (result.overall.tp, result.overall.fp, result.overall.fn) == (4, 2, 1)
    meta = build_site(folder, tmp_path / "site", truth=[str(tmp_path / "truth.geojson")])
    assert meta["truth_counts"] == {"TP": 4, "FP": 2, "FN": 1}
    # the merged city's truth too
    from mnc_d2.evaluation.folder_scoring import score_city
    from mnc_d2.inference.merge import merge_footprints

    merge_footprints(folder, tmp_path / "city.parquet")
    result, _ = score_city(folder, tmp_path / "city.parquet", [str(tmp_path / "truth.geojson")])
    assert (result.overall.tp, result.overall.fp, result.overall.fn) == (4, 2, 1)
    result, _ = score_folder(folder, [str(csv)])
    assert (result.overall.tp, result.overall.fp, result.overall.fn) == (4, 2, 2)


def test_a_merged_city_counts_a_building_seen_by_two_scenes_once(tmp_path):
    import shutil

    from mnc_d2.evaluation.folder_scoring import score_city
    from mnc_d2.inference.merge import merge_footprints
    from mnc_d2.inference.scenes import SceneRow, append_manifest, write_buildings_parquet
    from test_viewer import SCORES

    folder = _prediction_folder(tmp_path)
    _, geo = _truth(tmp_path)
    geo.to_file(tmp_path / "truth.geojson")
    truth = [str(tmp_path / "truth.geojson")]
    merge_footprints(folder, tmp_path / "city.parquet")
    # scenes that do not overlap: the city scores as its scenes do, shapes in metres alike
    by_scene, scene_shapes = score_folder(folder, truth, polygon_metrics=True)
    city, city_shapes = score_city(folder, tmp_path / "city.parquet", truth,
                                   polygon_metrics=True)
    counts = (city.overall.tp, city.overall.fp, city.overall.fn)
    assert counts == (by_scene.overall.tp, by_scene.overall.fp, by_scene.overall.fn)
    assert counts == (4, 2, 2)
    for key in ("pairs", "iou", "n_ratio"):
        assert city_shapes["all"][key] == pytest.approx(scene_shapes["all"][key], abs=1e-6)
    assert city_shapes["all"]["polis"] < 1e-3  # metres: the exact truth boxes
    # a third scene covering s0 again, with the same buildings: scored per scene they count
    # twice; in the merged city once
    shutil.copy(tmp_path / "scenes" / "s0.tif", tmp_path / "scenes" / "s0b.tif")
    again = gpd.read_parquet(folder / "buildings" / "s0.parquet")
    write_buildings_parquet(folder / "buildings" / "s0b.parquet", "s0b", list(again.geometry),
                            SCORES, "EPSG:4326")
    append_manifest(folder, [SceneRow("s0b", str(tmp_path / "scenes" / "s0b.tif"), "ok", 4)])
    twice, _ = score_folder(folder, truth)
    assert (twice.overall.tp, twice.overall.fp, twice.overall.fn) == (6, 3, 3)
    merge_footprints(folder, tmp_path / "city.parquet")
    once, _ = score_city(folder, tmp_path / "city.parquet", truth)
    assert (once.overall.tp, once.overall.fp, once.overall.fn) == (4, 2, 2)
    # the command line; SpaceNet CSV truth (pixels of each image) cannot score a city
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "score.py"), "--truth", *truth,
                          "--predictions", str(folder), "--city", str(tmp_path / "city.parquet"),
                          "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["overall"]["tp"] == 4
    csv, _ = _truth(tmp_path)
    with pytest.raises(FolderInputError, match="SpaceNet CSV truth is in each image's pixels"):
        score_city(folder, tmp_path / "city.parquet", [str(csv)])
    # the viewer's TP / FP / FN of the city are the same matching
    from mnc_d2.viewer.site import build_site

    meta = build_site(folder, tmp_path / "site", city=str(tmp_path / "city.parquet"),
                      truth=truth)
    assert meta["truth_counts"] == {"TP": 4, "FP": 2, "FN": 2}
    shown = gpd.read_file(tmp_path / "site" / "data" / "truth.geojson")
    assert sorted(shown["match"]) == ["FN", "FN", "TP", "TP", "TP", "TP"]


def test_spacenet_tiles_are_grouped_by_city_as_the_tester_groups_them(tmp_path):
    """Scenes named as SpaceNet 2 tiles, scored against truth CSVs, get the release's groups
    (mean city F1, what the evaluator and the tester report); other scenes or map truth one
    group; --group-by city where the scenes name no city is a clear error."""
    from mnc_d2.evaluation.spacenet_metric import score_csv
    from mnc_d2.formats.spacenet_csv import write_proposal_csv
    from mnc_d2.inference.scenes import SceneRow, append_manifest

    folder = _prediction_folder(tmp_path)
    ids = {"s0": "AOI_2_Vegas_img1", "s1": "AOI_3_Paris_img2"}
    rows = []
    for scene, image_id in ids.items():  # the same scenes under SpaceNet names
        named = tmp_path / "scenes" / f"RGB-PanSharpen_{image_id}.tif"
        (tmp_path / "scenes" / f"{scene}.tif").rename(named)
        rows.append(SceneRow(scene, str(named), "ok", 4))
    append_manifest(folder, rows)  # the latest row of a scene is the one read
    pix = [shapely.box(20 + 35 * j, 30, 45 + 35 * j, 60) for j in range(4)]
    extra = [shapely.box(100, 100 + 25 * k, 120, 120 + 25 * k) for k in range(2)]
    truth = {"AOI_2_Vegas_img1": [pix[1], pix[3], extra[0]],  # TP 2, FP 1, FN 1
             "AOI_3_Paris_img2": [pix[1], pix[2], pix[3], *extra]}  # TP 3, FP 0, FN 2
    csv = tmp_path / "truth.csv"
    csv.write_text("ImageId,BuildingId,PolygonWKT_Pix,PolygonWKT_Geo\n" + "".join(
        f'{i},{b},"{t.wkt}","{t.wkt}"\n' for i, ts in truth.items() for b, t in enumerate(ts)))
    write_proposal_csv(tmp_path / "props.csv", {
        i: [(shapely.box(20 + 35 * j, 30, 45 + 35 * j, 60), s) for j, s in enumerate(SCORES)
            if s >= 0.5] for i in truth})
    for group_by in ("city", "none"):
        reference = score_csv(str(csv), str(tmp_path / "props.csv"), group_by=group_by)
        result, _ = score_folder(folder, [str(csv)], group_by=group_by)
        assert result.to_json() == reference.to_json(), group_by
    result, _ = score_folder(folder, [str(csv)])  # auto
    assert result.group_by == "city" and set(result.cities) == {"AOI_2_Vegas", "AOI_3_Paris"}
    assert result.mean_city_f1 == pytest.approx((2 / 3 + 0.75) / 2)  # not the pooled 5 / 7
    assert result.overall.f1 == pytest.approx(10 / 14)
    # map truth of the same buildings: scenes are images named by scene, one group
    geo = tmp_path / "truth.geojson"
    frames = []
    for scene, image_id in ids.items():
        with rasterio.open(tmp_path / "scenes" / f"RGB-PanSharpen_{image_id}.tif") as src:
            frames += [pixel_to_map(t, src.transform) for t in truth[image_id]]
    gpd.GeoDataFrame(geometry=frames, crs="EPSG:4326").to_file(geo)
    result, _ = score_folder(folder, [str(geo)])
    assert result.group_by == "none" and result.overall.f1 == pytest.approx(10 / 14)
    with pytest.raises(FolderInputError, match="--group-by city needs SpaceNet truth CSVs"):
        score_folder(folder, [str(geo)], group_by="city")
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "score.py"), "--truth", str(csv),
                          "--predictions", str(folder)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "mean city F1 (spacenet rules, grouped by city): 0.7083" in out.stdout


def test_moved_scenes_are_found_by_name_and_signed_urls_only_locally():
    """--scene-root maps a manifest's local path, and a URL whose token the manifest left out
    (it cannot be read as recorded), to the file of that name there; other URLs stay."""
    from mnc_d2.evaluation.folder_scoring import remap_scene

    assert remap_scene("/old/place/a.tif", "/new") == "/new/a.tif"
    assert remap_scene("https://host/b.tif?***", "/new") == "/new/b.tif"
    assert remap_scene("https://host/c.tif", "/new") == "https://host/c.tif"
    assert remap_scene("https://host/b.tif?***", None) == "https://host/b.tif?***"


def test_map_truth_near_a_scene_is_all_the_truth_the_scene_can_hold():
    """scene_frames looks up map truth near each scene (an index, not the whole table per
    scene): in a UTM scene, the truth it finds by its bounds is a superset of what the exact
    rule keeps (a representative point inside the footprint), outlines across every edge and
    corner included, and leaves out truth elsewhere."""
    import numpy as np

    from mnc_d2.evaluation.folder_scoring import _near

    crs = "EPSG:32611"  # Las Vegas, UTM 11N
    footprint = shapely.box(660000, 4000000, 660300, 4000200)
    rng = np.random.default_rng(0)
    centres = np.c_[rng.uniform(659900, 660400, 400), rng.uniform(3999900, 4000300, 400)]
    outlines = gpd.GeoSeries([shapely.box(x - 6, y - 4, x + 6, y + 4) for x, y in centres] +
                             [shapely.box(661000, 4001000, 661010, 4001010)], crs=crs)
    in_4326 = outlines.to_crs("EPSG:4326")
    near = _near(shapely.STRtree(in_4326.to_numpy()), footprint, crs)
    kept = np.flatnonzero(outlines.representative_point().within(footprint).to_numpy())
    crossing = np.flatnonzero(outlines.intersects(footprint.boundary).to_numpy())
    assert len(kept) > 100 and len(crossing) > 10  # the edges are tested, not only the inside
    assert set(kept) <= set(near.tolist()) and len(outlines) - 1 not in set(near.tolist())
    assert (np.diff(near) > 0).all()  # the truth's order, as the whole table gave it
