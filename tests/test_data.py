"""SpaceNet data layer: layout, labels, registration, mapper, bad input, synthetic generator."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
import torch
from affine import Affine
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from shapely.geometry import box

import mnc_d2
from mnc_d2.data import (
    SpaceNetDatasetMapper,
    compute_band_stats,
    load_spacenet_dicts,
    register_spacenet_instances,
    resolve_band_stats,
    split_of,
)
from mnc_d2.data.labels import LabelError, RepairLog, read_geojson_footprints
from mnc_d2.data.spacenet import RasterError, raster_header
from mnc_d2.synthetic.spacenet2 import generate_city
from mnc_d2.data.transforms import Rot90Transform


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("syn") / "spacenet"
    generate_city(root, "vegas", 5, seed=3, progress=False)
    generate_city(root, "paris", 3, seed=3, progress=False)
    return root


def _write_tif(path: Path, data: np.ndarray, transform=None, crs="EPSG:4326", nodata=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"transform": transform} if transform is not None else {}
    if crs is not None:
        kwargs["crs"] = crs
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2],
                       count=data.shape[0], dtype=str(data.dtype), nodata=nodata, **kwargs) as dst:
        dst.write(data)


def _base_cfg(bands=3):
    cfg = get_cfg()
    mnc_d2.add_mnc_config(cfg)
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.MODEL.PIXEL_MEAN = [0.0] * bands
    cfg.MODEL.PIXEL_STD = [1.0] * bands
    cfg.INPUT.MIN_SIZE_TRAIN = (650,)
    cfg.INPUT.MAX_SIZE_TRAIN = 650
    cfg.INPUT.MIN_SIZE_TEST = 650
    return cfg


# --- synthetic generator: the exact SpaceNet layout ------------------------------------------


def test_synthetic_layout(synthetic):
    aoi = synthetic / "AOI_2_Vegas_Train"
    expected = {"RGB-PanSharpen": (3, 650), "MUL-PanSharpen": (8, 650), "PAN": (1, 650),
                "MUL": (8, 163)}
    for product, (count, size) in expected.items():
        path = aoi / product / f"{product}_AOI_2_Vegas_img1.tif"
        with rasterio.open(path) as src:
            assert (src.count, src.width, src.height) == (count, size, size)
            assert src.dtypes[0] == "uint16" and src.crs.to_epsg() == 4326
            assert src.read().max() <= 2047
    header = (aoi / "summaryData" / "AOI_2_Vegas_Train_Building_Solutions.csv").read_text()
    assert header.startswith("ImageId,BuildingId,PolygonWKT_Pix,PolygonWKT_Geo\n")
    # SpaceNet 2's own WKT (GDAL/OGR): 'x y 0,x y 0' and holes joined by '),(' with no space,
    # which the Java tester reads as holes
    assert '"POLYGON ((' in header and " 0," in header and "POLYGON Z" not in header
    assert ", " not in header
    assert (aoi / "geojson" / "buildings" / "buildings_AOI_2_Vegas_img5.geojson").exists()


def test_synthetic_is_deterministic(tmp_path, synthetic):
    generate_city(tmp_path, "paris", 3, seed=3, progress=False)
    name = "AOI_3_Paris_Train/summaryData/AOI_3_Paris_Train_Building_Solutions.csv"
    assert (tmp_path / name).read_bytes() == (synthetic / name).read_bytes()
    tif = "AOI_3_Paris_Train/MUL/MUL_AOI_3_Paris_img2.tif"
    with rasterio.open(tmp_path / tif) as a, rasterio.open(synthetic / tif) as b:
        assert np.array_equal(a.read(), b.read())


def test_ensure_synthetic_replaces_another_copy_whole(tmp_path):
    """Asking for fewer images than an earlier copy holds (or another seed) regenerates the city
    as a whole: no image of the older copy stays beside the new summary CSV, and the older
    copy's marker no longer claims it is there. A folder it did not write is never touched."""
    from mnc_d2.synthetic.spacenet2 import GENERATED_STAMP, ensure_synthetic

    aoi = tmp_path / "spacenet" / "AOI_3_Paris_Train"

    def images():
        tifs = {p.stem.rsplit("_", 1)[1] for p in (aoi / "RGB-PanSharpen").glob("*.tif")}
        rows = pd.read_csv(aoi / "summaryData" / "AOI_3_Paris_Train_Building_Solutions.csv")
        return tifs, {i.rsplit("_", 1)[1] for i in rows["ImageId"]}

    ensure_synthetic(tmp_path, ["paris"], 3, seed=3)
    assert images() == ({"img1", "img2", "img3"}, {"img1", "img2", "img3"})
    ensure_synthetic(tmp_path, ["paris"], 2, seed=3)
    assert images() == ({"img1", "img2"}, {"img1", "img2"})
    assert (aoi / GENERATED_STAMP).exists()
    assert not list((tmp_path / "spacenet").glob(".complete-paris-3-*"))
    ensure_synthetic(tmp_path, ["paris"], 3, seed=3)  # regenerated, not taken from the marker
    assert images()[0] == {"img1", "img2", "img3"}
    assert not (tmp_path / "spacenet" / ".generating").exists()

    foreign = tmp_path / "real" / "spacenet" / "AOI_3_Paris_Train"
    foreign.mkdir(parents=True)
    (foreign / "keep.txt").write_text("real data")
    with pytest.raises(FileExistsError, match="AOI_3_Paris_Train exists and was not written"):
        ensure_synthetic(tmp_path / "real", ["paris"], 1, seed=0)
    assert (foreign / "keep.txt").read_text() == "real data"


def test_dark_roofs_differ_from_asphalt_only_beyond_rgb():
    from mnc_d2.synthetic.spacenet2 import SIGNATURES

    dark, asphalt = np.array(SIGNATURES["roof_dark"]), np.array(SIGNATURES["asphalt"])
    rgb = [4, 2, 1]
    assert np.abs(dark[rgb] - asphalt[rgb]).max() <= 0.021
    assert (dark[5:] - asphalt[5:]).min() > 0.1  # red edge and NIR separate them


def test_hard_setting_is_denser_smaller_cluttered_and_dark_in_nir():
    from mnc_d2.synthetic.spacenet2 import SETTINGS, SIGNATURES, STYLES, render_scene

    def stats(setting):
        counts, small, dark = [], 0, 0
        for i in range(6):
            _, footprints, attrs = render_scene(np.random.default_rng(i), STYLES["paris"],
                                                setting=SETTINGS[setting])
            counts.append(len(footprints))
            small += sum(f.area * 0.09 < 100 for f in footprints)
            dark += sum(a["roof"] == "roof_dark_nir" for a in attrs)
        return np.mean(counts), small / max(sum(counts), 1), dark

    default, hard = stats("default"), stats("hard")
    assert hard[0] > 1.3 * default[0] and hard[1] > default[1]
    assert default[2] == 0 and hard[2] > 0
    dark, asphalt = np.array(SIGNATURES["roof_dark_nir"]), np.array(SIGNATURES["asphalt"])
    assert np.abs(dark - asphalt).max() <= 0.031  # no band separates them
    with pytest.raises(ValueError, match="setting='medium'"):
        generate_city(Path("/nonexistent"), "paris", 1, setting="medium")


def test_band_stats_target_std_rescales_pixel_std(synthetic, tmp_path):
    register_spacenet_instances("_t_stats_target", synthetic / "AOI_3_Paris_Train",
                                "RGB-PanSharpen")
    cfg = _base_cfg(bands=3)
    cfg.INPUT.BANDS = [3, 2, 1]
    cfg.INPUT.BAND_STATS = "auto"
    cfg.INPUT.BAND_STATS_TARGET_STD = 57.4
    cfg.DATASETS.TRAIN = ("_t_stats_target",)
    cfg.OUTPUT_DIR = str(tmp_path)
    stats = resolve_band_stats(cfg)
    assert cfg.MODEL.PIXEL_STD == pytest.approx([s / 57.4 for s in stats["std"]])
    cfg.INPUT.BAND_STATS_TARGET_STD = 0.0
    with pytest.raises(ValueError, match="BAND_STATS_TARGET_STD"):
        resolve_band_stats(cfg)


# --- registration and labels -------------------------------------------------------------------


def test_csv_and_geojson_labels_agree(synthetic):
    aoi = synthetic / "AOI_2_Vegas_Train"
    from_csv = {d["image_id"]: d for d in load_spacenet_dicts(aoi, labels="csv")}
    from_geojson = {d["image_id"]: d for d in load_spacenet_dicts(aoi, labels="geojson")}
    assert from_csv.keys() == from_geojson.keys()
    for image_id, rec in from_csv.items():
        a = [shapely.from_wkt(x["wkt_pix"]) for x in rec["annotations"]]
        b = [shapely.from_wkt(x["wkt_pix"]) for x in from_geojson[image_id]["annotations"]]
        assert len(a) == len(b)
        for pa, pb in zip(a, b):
            assert pa.symmetric_difference(pb).area < 0.05 * pa.area + 0.5


def test_registration_and_dict_fields(synthetic):
    register_spacenet_instances("_t_vegas", synthetic / "AOI_2_Vegas_Train")
    dicts = DatasetCatalog.get("_t_vegas")
    meta = mnc_d2.data.spacenet.MetadataCatalog.get("_t_vegas")
    assert meta.thing_classes == ["building"] and meta.evaluator_type == "spacenet"
    assert (meta.aoi, meta.product, meta.num_bands) == ("AOI_2_Vegas", "RGB-PanSharpen", 3)
    rec = next(d for d in dicts if d["annotations"])
    assert set(rec) >= {"file_name", "image_id", "height", "width", "annotations", "crs",
                        "transform"}
    ann = rec["annotations"][0]
    assert ann["category_id"] == 0 and ann["iscrowd"] == 0 and ann["bbox_mode"] == 0


def test_mul_labels_scaled_to_its_grid(synthetic):
    aoi = synthetic / "AOI_2_Vegas_Train"
    pan = {d["image_id"]: d for d in load_spacenet_dicts(aoi, "RGB-PanSharpen")}
    mul = {d["image_id"]: d for d in load_spacenet_dicts(aoi, "MUL")}
    for image_id, rec in mul.items():
        assert (rec["height"], rec["width"]) == (163, 163)
        for a, b in zip(rec["annotations"], pan[image_id]["annotations"]):
            assert a["bbox"] == pytest.approx([v * 163 / 650 for v in b["bbox"]], abs=1e-3)


def test_holes_are_kept_as_rle_and_train_as_holes(tmp_path):
    aoi = tmp_path / "AOI_9_Test_Train"
    transform = Affine(1e-5, 0, 10.0, 0, -1e-5, 50.0)
    _write_tif(aoi / "RGB-PanSharpen" / "RGB-PanSharpen_AOI_9_Test_img1.tif",
               np.ones((3, 64, 64), np.uint16), transform)
    (aoi / "summaryData").mkdir(parents=True)
    courtyard = "POLYGON ((10 10 0,50 10 0,50 50 0,10 50 0,10 10 0),(20 20 0,40 20 0,40 40 0,20 40 0,20 20 0))"
    (aoi / "summaryData" / "AOI_9_Test_Train_Building_Solutions.csv").write_text(
        f'ImageId,BuildingId,PolygonWKT_Pix,PolygonWKT_Geo\nAOI_9_Test_img1,0,"{courtyard}",x\n')
    rec = load_spacenet_dicts(aoi)[0]
    seg = rec["annotations"][0]["segmentation"]
    assert isinstance(seg, dict) and "counts" in seg
    cfg = _base_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (64,), 64
    cfg.INPUT.AUGMENT.HFLIP_PROB = cfg.INPUT.AUGMENT.VFLIP_PROB = 0.0
    cfg.INPUT.AUGMENT.ROT90 = False
    out = SpaceNetDatasetMapper(cfg, is_train=True)(rec)
    mask = out["instances"].gt_masks.tensor[0]
    assert mask[15, 15] and not mask[30, 30] and int(mask.sum()) == 40 * 40 - 20 * 20


def test_real_tile_footprints_land_at_known_pixels(spacenet_sample):
    tif = spacenet_sample / "sample_geotiff.tif"
    head = raster_header(tif)
    repairs = RepairLog()
    polys = read_geojson_footprints(spacenet_sample / "geotiff_labels.geojson", head["crs"],
                                    head["transform"], head["width"], head["height"], repairs)
    assert len(polys) == 43
    assert all(box(0, 0, 900, 900).contains(p) for p in polys)
    # Independent check: pixel = (X - x_origin) / 0.5, (y_origin - Y) / 0.5 from the raw file.
    t = head["transform"]
    raw = json.loads((spacenet_sample / "geotiff_labels.geojson").read_text())
    x, y = raw["features"][0]["geometry"]["coordinates"][0][0][:2]
    expected = ((x - t.c) / t.a, (y - t.f) / t.e)
    first = shapely.get_coordinates(polys[0])
    assert np.min(np.hypot(*(first - expected).T)) < 1e-6
    assert not repairs


def test_projected_geojson_without_crs_uses_raster_crs(spacenet_sample, caplog):
    tif = spacenet_sample / "sample_geotiff_custom_proj.tif"
    head = raster_header(tif)
    polys = read_geojson_footprints(spacenet_sample / "geotiff_custom_proj_labels.geojson",
                                    head["crs"], head["transform"], head["width"],
                                    head["height"], RepairLog())
    assert len(polys) == 19
    assert all(box(0, 0, head["width"], head["height"]).intersects(p) for p in polys)
    assert "names no CRS" in caplog.text


def test_projected_geojson_without_crs_outside_raster_is_an_error(tmp_path):
    tif = tmp_path / "t.tif"
    _write_tif(tif, np.ones((1, 10, 10), np.uint16), Affine(1, 0, 500000, 0, -1, 4000000),
               crs="EPSG:32616")
    gj = tmp_path / "l.geojson"
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {},
        "geometry": shapely.geometry.mapping(box(100000, 100000, 100005, 100005))}]}))
    head = raster_header(tif)
    with pytest.raises(LabelError, match="names no CRS"):
        read_geojson_footprints(gj, head["crs"], head["transform"], 10, 10, RepairLog())


def test_geojson_is_reprojected_and_clipped(tmp_path):
    # Raster in UTM 16N; labels in lon/lat (named CRS), one crossing the right edge.
    t = Affine(0.5, 0, 500000.0, 0, -0.5, 3700000.0)
    tif = tmp_path / "t.tif"
    _write_tif(tif, np.ones((1, 100, 100), np.uint16), t, crs="EPSG:32616")
    from pyproj import Transformer

    to_ll = Transformer.from_crs("EPSG:32616", "EPSG:4326", always_xy=True)
    inside = [to_ll.transform(*t * (px, py)) for px, py in [(10, 10), (30, 10), (30, 30), (10, 30), (10, 10)]]
    crossing = [to_ll.transform(*t * (px, py)) for px, py in [(90, 50), (120, 50), (120, 60), (90, 60), (90, 50)]]
    gj = tmp_path / "l.geojson"
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"Id": 0}, "geometry": {"type": "Polygon", "coordinates": [inside]}},
        {"type": "Feature", "properties": {"Id": 0}, "geometry": {"type": "Polygon", "coordinates": [crossing]}},
    ]}))
    repairs = RepairLog()
    polys = read_geojson_footprints(gj, raster_header(tif)["crs"], t, 100, 100, repairs)
    assert polys[0].symmetric_difference(box(10, 10, 30, 30)).area < 1e-3
    assert polys[1].symmetric_difference(box(90, 50, 100, 60)).area < 1e-3  # clipped, kept
    assert repairs["clipped: crossing the tile edge"] == 1


# --- bad input -----------------------------------------------------------------------------------


def test_missing_folder_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="AOI_2_Vegas_Train does not exist"):
        load_spacenet_dicts(tmp_path / "AOI_2_Vegas_Train")
    with pytest.raises(FileNotFoundError, match=r"RGB-PanSharpen/\*.tif"):
        load_spacenet_dicts(tmp_path, version="spacenet2")


def test_builtin_missing_folder_names_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="DETECTRON2_DATASETS"):
        DatasetCatalog.get("spacenet2_khartoum_val")


def test_builtin_names_read_synthetic_with_split(monkeypatch, synthetic, caplog):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(synthetic.parent))
    train = DatasetCatalog.get("spacenet2_vegas_train")
    val = DatasetCatalog.get("spacenet2_vegas_val")
    ids = {d["image_id"] for d in train} | {d["image_id"] for d in val}
    assert len(ids) == 5 and not ({d["image_id"] for d in train} & {d["image_id"] for d in val})
    assert all(split_of(d["image_id"]) == "val" for d in val)
    from mnc_d2.data import builtin

    monkeypatch.setattr(builtin, "_MISSING_SAID", set())  # whatever earlier tests logged
    with caplog.at_level(logging.WARNING, logger="mnc_d2.data.builtin"):
        both = DatasetCatalog.get("spacenet2_all_train_8band")
        DatasetCatalog.get("spacenet2_all_train_8band")  # read again (band statistics, loader)
    assert {d["image_id"].rsplit("_", 1)[0] for d in both} <= {"AOI_2_Vegas", "AOI_3_Paris"}
    assert all("MUL-PanSharpen" in d["file_name"] for d in both)
    said = [r.getMessage() for r in caplog.records if "missing under" in r.getMessage()]
    assert len(said) == 1 and "AOI_5_Khartoum_Train" in said[0]  # the missing cities, once


def test_raster_without_crs(tmp_path):
    tif = tmp_path / "x.tif"
    _write_tif(tif, np.ones((1, 8, 8), np.uint16), Affine(1, 0, 5, 0, -1, 5), crs=None)
    with pytest.raises(RasterError, match="has no CRS"):
        raster_header(tif)


def test_raster_without_transform(tmp_path):
    tif = tmp_path / "x.tif"
    _write_tif(tif, np.ones((1, 8, 8), np.uint16), None, crs="EPSG:4326")
    with pytest.raises(RasterError, match="no geotransform"):
        raster_header(tif)


def _ungridded(path: Path, kind: str) -> Path:
    """An 8 x 8 GeoTIFF tied to the map by ground control points only, by RPCs only, or with a
    CRS and no geotransform."""
    from rasterio.control import GroundControlPoint
    from rasterio.rpc import RPC

    _write_tif(path, np.ones((1, 8, 8), np.uint16), None,
               crs="EPSG:32611" if kind == "identity" else None)
    with rasterio.open(path, "r+") as dst:
        if kind == "gcps":
            dst.gcps = ([GroundControlPoint(r, c, 500000 + c, 4000000 - r)
                         for r, c in ((0, 0), (0, 8), (8, 0), (8, 8))], "EPSG:32611")
        elif kind == "rpcs":
            dst.rpcs = RPC(height_off=0, height_scale=100, lat_off=36.2, lat_scale=0.01,
                           long_off=-115.2, long_scale=0.01, line_off=4, line_scale=4,
                           samp_off=4, samp_scale=4, line_num_coeff=[0, 0, -1] + [0] * 17,
                           line_den_coeff=[1] + [0] * 19, samp_num_coeff=[0, 1] + [0] * 18,
                           samp_den_coeff=[1] + [0] * 19)
    return path


@pytest.mark.parametrize("kind, words", [
    ("gcps", "georeferenced only by 4 ground control points (in EPSG:32611), not by a map grid; "
             "warp it onto one first, e.g. gdalwarp -t_srs"),
    ("rpcs", "has rational polynomial coefficients (RPCs) but no map grid: raw, not "
             "orthorectified, imagery; orthorectify it first, e.g. gdalwarp -rpc"),
    ("identity", "has a CRS (EPSG:32611) but no geotransform")])
def test_imagery_not_on_a_map_grid_is_refused_with_its_fix(tmp_path, kind, words):
    """Ground control points or RPCs without a grid, or a CRS without a geotransform (GDAL then
    reports the identity affine: a scene predicted from it was placed at map coordinates
    0..width of its CRS and ended ok), are refused in training and in prediction, each with
    the command that fixes it."""
    from mnc_d2.inference.engines import _check_scene

    tif = _ungridded(tmp_path / f"{kind}.tif", kind)
    with pytest.raises(RasterError) as training:
        raster_header(tif)
    with pytest.raises(ValueError) as prediction:
        _check_scene(str(tif), [1])
    for exc in (training.value, prediction.value):
        assert str(exc).startswith(f"{tif} ") and words in str(exc), exc


def test_truncated_raster(synthetic, tmp_path):
    src = synthetic / "AOI_2_Vegas_Train" / "MUL-PanSharpen" / "MUL-PanSharpen_AOI_2_Vegas_img1.tif"
    data = src.read_bytes()
    bad = tmp_path / "trunc.tif"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(RasterError, match="truncated or corrupt"):
        raster_header(bad)


def test_label_repairs_are_counted(tmp_path, caplog):
    aoi = tmp_path / "AOI_9_Test_Train"
    _write_tif(aoi / "RGB-PanSharpen" / "RGB-PanSharpen_AOI_9_Test_img1.tif",
               np.ones((3, 64, 64), np.uint16), Affine(1e-5, 0, 10, 0, -1e-5, 50))
    _write_tif(aoi / "RGB-PanSharpen" / "RGB-PanSharpen_AOI_9_Test_img2.tif",
               np.ones((3, 64, 64), np.uint16), Affine(1e-5, 0, 10, 0, -1e-5, 50))
    rows = [
        'AOI_9_Test_img1,0,"POLYGON ((0 0 0,20 20 0,20 0 0,0 20 0,0 0 0))",x',  # bowtie
        'AOI_9_Test_img1,1,"MULTIPOLYGON (((30 30,40 30,40 40,30 40,30 30)),((45 45,50 45,50 50,45 50,45 45)))",x',
        "AOI_9_Test_img2,-1,POLYGON EMPTY,POLYGON EMPTY",
    ]
    (aoi / "summaryData").mkdir()
    (aoi / "summaryData" / "AOI_9_Test_Train_Building_Solutions.csv").write_text(
        "ImageId,BuildingId,PolygonWKT_Pix,PolygonWKT_Geo\n" + "\n".join(rows) + "\n")
    recs = {d["image_id"]: d for d in load_spacenet_dicts(aoi)}
    assert len(recs["AOI_9_Test_img1"]["annotations"]) == 4  # 2 triangles + 2 parts
    assert recs["AOI_9_Test_img2"]["annotations"] == []
    assert "made valid: self-intersecting: 1" in caplog.text
    assert "split: MultiPolygon into parts: 1" in caplog.text


def test_nan_coordinates(tmp_path, caplog):
    t = Affine(1, 0, 500000.0, 0, -1, 3700000.0)
    tif = tmp_path / "t.tif"
    _write_tif(tif, np.ones((1, 20, 20), np.uint16), t, crs="EPSG:32616")
    nan = float("nan")
    ring = [[500001, 3699999], [500005, 3699999], [500005, 3699995], [500001, 3699995]]
    gj = tmp_path / "l.geojson"
    gj.write_text(json.dumps({"type": "FeatureCollection",
                              "crs": {"type": "name", "properties": {"name": "EPSG:32616"}},
                              "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring + [ring[0]]]}},
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [[[nan, 1]] + ring + [[nan, 1]]]}},
    ]}))
    repairs = RepairLog()
    polys = read_geojson_footprints(gj, raster_header(tif)["crs"], t, 20, 20, repairs)
    assert len(polys) == 1 and repairs["dropped: NaN or unreadable coordinates"] == 1
    # In a summary CSV, 'nan' is not WKT: a clear error names the file and line.
    from mnc_d2.data.labels import read_summary_csv

    csv_path = tmp_path / "s.csv"
    csv_path.write_text('ImageId,BuildingId,PolygonWKT_Pix,PolygonWKT_Geo\n'
                        'AOI_1_X_img1,0,"POLYGON ((nan 1 0,5 1 0,5 5 0,nan 1 0))",x\n')
    with pytest.raises(ValueError, match=r"s\.csv, line 2: .*not valid WKT"):
        read_summary_csv(csv_path)


def test_summary_csv_wrong_header(tmp_path):
    aoi = tmp_path / "AOI_9_Test_Train"
    _write_tif(aoi / "RGB-PanSharpen" / "RGB-PanSharpen_AOI_9_Test_img1.tif",
               np.ones((3, 8, 8), np.uint16), Affine(1e-5, 0, 10, 0, -1e-5, 50))
    (aoi / "summaryData").mkdir()
    (aoi / "summaryData" / "AOI_9_Test_Train_Building_Solutions.csv").write_text(
        "image,poly\nAOI_9_Test_img1,POLYGON EMPTY\n")
    with pytest.raises(ValueError, match=r"Building_Solutions.csv lacks column\(s\)"):
        load_spacenet_dicts(aoi)


def test_duplicate_image_ids_in_a_product_folder(synthetic, tmp_path):
    aoi = tmp_path / "AOI_2_Vegas_Train"
    shutil.copytree(synthetic / "AOI_2_Vegas_Train", aoi)
    shutil.copy(aoi / "MUL-PanSharpen" / "MUL-PanSharpen_AOI_2_Vegas_img1.tif",
                aoi / "RGB-PanSharpen" / "MUL-PanSharpen_AOI_2_Vegas_img1.tif")
    with pytest.raises(ValueError, match="appears twice"):
        load_spacenet_dicts(aoi)


# --- mapper, transforms, band statistics, checkpoint inflation ----------------------------------


def test_band_selection_and_pixel_mean_check(synthetic):
    rec = load_spacenet_dicts(synthetic / "AOI_2_Vegas_Train", "MUL-PanSharpen")[1]
    cfg = _base_cfg(bands=3)
    cfg.INPUT.BANDS = [7, 5, 3]
    out = SpaceNetDatasetMapper(cfg, is_train=False)(rec)
    with rasterio.open(rec["file_name"]) as src:
        assert torch.equal(out["image"][0], torch.from_numpy(src.read(7).astype(np.float32)))
    cfg.INPUT.BANDS = [1, 2, 3, 4, 5, 6, 7, 8]
    with pytest.raises(ValueError, match="INPUT.BANDS has 8 entries.*MODEL.PIXEL_MEAN has 3"):
        SpaceNetDatasetMapper(cfg, is_train=False)


def test_nodata_is_filled_with_the_band_mean(tmp_path):
    tif = tmp_path / "n.tif"
    data = np.full((2, 4, 4), 100, np.uint16)
    data[:, 0, 0] = 0
    _write_tif(tif, data, Affine(1, 0, 0, 0, -1, 0), nodata=0)
    from mnc_d2.data import read_bands

    image = read_bands(str(tif), [1, 2], fill=[7.0, 9.0])
    assert image[0, 0].tolist() == [7.0, 9.0] and image[1, 1].tolist() == [100.0, 100.0]
    # float imagery: NaN nodata (NaN == NaN is false) and undeclared NaNs are filled too
    for nodata in (float("nan"), None):
        floats = np.full((2, 4, 4), 0.25, np.float32)
        floats[:, 0, 0] = np.nan
        _write_tif(tif, floats, Affine(1, 0, 0, 0, -1, 0), nodata=nodata)
        image = read_bands(str(tif), [1, 2], fill=[7.0, 9.0])
        assert image[0, 0].tolist() == [7.0, 9.0] and image[1, 1].tolist() == [0.25, 0.25]
        # and the band statistics leave them out
        stats = compute_band_stats([str(tif)], [1, 2])
        assert stats["mean"] == pytest.approx([0.25, 0.25])


def test_pixels_outside_an_internal_mask_or_an_alpha_band_are_filled_for_training(tmp_path):
    """A collar marked by an internal mask (or an alpha band) rather than a nodata value: its
    values are whatever the producer left (an 8-bit JPEG COG's are rarely 0). The training
    mapper, like prediction, must see the band means there, not those values."""
    from detectron2.config import get_cfg

    from mnc_d2.config import add_mnc_config
    from mnc_d2.data import SpaceNetDatasetMapper, read_bands

    data = np.full((3, 16, 16), 500, np.uint16)
    data[:, :, :5] = 7  # the collar's leftover values
    valid = np.full((16, 16), 255, np.uint8)
    valid[:, :5] = 0
    masked, rgba = tmp_path / "masked.tif", tmp_path / "rgba.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(masked, "w", driver="GTiff", height=16, width=16, count=3,
                           dtype="uint16", crs="EPSG:32611",
                           transform=Affine(0.3, 0, 0, 0, -0.3, 0)) as dst:
            dst.write(data)
            dst.write_mask(valid)
    with rasterio.open(rgba, "w", driver="GTiff", height=16, width=16, count=4, dtype="uint16",
                       crs="EPSG:32611", transform=Affine(0.3, 0, 0, 0, -0.3, 0),
                       photometric="RGB", alpha="YES") as dst:
        dst.write(np.concatenate([data, valid[None].astype(np.uint16)]))
    cfg = get_cfg()
    add_mnc_config(cfg)
    cfg.INPUT.BANDS = [1, 2, 3]
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = [400.0, 410.0, 420.0], [1.0, 1.0, 1.0]
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 16, 16
    mapper = SpaceNetDatasetMapper(cfg, is_train=False)
    for tif in (masked, rgba):
        out = mapper({"file_name": str(tif), "height": 16, "width": 16, "image_id": 0,
                      "annotations": []})
        image = out["image"].permute(1, 2, 0).numpy()  # (H, W, C) as read, before normalising
        assert image[:, :5].reshape(-1, 3).tolist() == [[400.0, 410.0, 420.0]] * 80, tif
        assert (image[:, 5:] == 500).all(), tif
        image, inside = read_bands(str(tif), [1, 2, 3], [1.0, 2.0, 3.0], with_valid=True)
        assert inside.sum() == 16 * 11 and not inside[:, :5].any()
        assert image[0, 0].tolist() == [1.0, 2.0, 3.0] and image[0, 5].tolist() == [500.0] * 3


def test_rot90_coords_follow_the_image():
    image = np.zeros((4, 6), np.uint8)
    image[1, 4] = 1  # pixel centre (x=4.5, y=1.5)
    for k in range(4):
        t = Rot90Transform(4, 6, k)
        rotated = t.apply_image(image)
        y, x = np.argwhere(rotated)[0]
        assert t.apply_coords(np.array([[4.5, 1.5]]))[0].tolist() == [x + 0.5, y + 0.5]
        assert np.array_equal(t.inverse().apply_image(rotated), image)


def test_band_stats_auto(synthetic, tmp_path):
    register_spacenet_instances("_t_stats", synthetic / "AOI_3_Paris_Train", "MUL-PanSharpen")
    cfg = _base_cfg(bands=2)
    cfg.INPUT.BANDS = [2, 7]
    cfg.INPUT.BAND_STATS = "auto"
    cfg.DATASETS.TRAIN = ("_t_stats",)
    cfg.OUTPUT_DIR = str(tmp_path)
    stats = resolve_band_stats(cfg)
    saved = json.loads((tmp_path / "band_stats.json").read_text())
    assert saved == stats and cfg.MODEL.PIXEL_MEAN == stats["mean"]
    files = [d["file_name"] for d in DatasetCatalog.get("_t_stats")]
    pixels = np.concatenate([rasterio.open(f).read([2, 7]).reshape(2, -1) for f in files], 1)
    assert stats["mean"] == pytest.approx(pixels.mean(1).tolist(), rel=1e-6)
    assert stats["std"] == pytest.approx(pixels.std(1).tolist(), rel=1e-4)
    assert compute_band_stats(files, [2, 7], max_images=1)["num_images"] == 1
    with pytest.raises(ValueError, match=r"reads bands \[2, 9\].*has 8 band"):
        compute_band_stats(files, [2, 9], max_images=1)  # the band reader's check, file named


def test_empty_images_are_kept_by_the_mapper(synthetic):
    rec = {"file_name": str(synthetic / "AOI_2_Vegas_Train" / "RGB-PanSharpen" /
                            "RGB-PanSharpen_AOI_2_Vegas_img1.tif"),
           "image_id": "AOI_2_Vegas_img1", "height": 650, "width": 650, "annotations": []}
    out = SpaceNetDatasetMapper(_base_cfg(), is_train=True)(rec)
    assert len(out["instances"]) == 0 and out["image"].shape[0] == 3


def test_convert_to_coco(synthetic, tmp_path, repo_root):
    import subprocess
    import sys

    from pycocotools.coco import COCO

    out = tmp_path / "vegas.json"
    subprocess.run([sys.executable, str(repo_root / "tools" / "convert_spacenet_to_coco.py"),
                    "--aoi-root", str(synthetic / "AOI_2_Vegas_Train"), "--output", str(out)],
                   check=True, capture_output=True)
    coco = COCO(str(out))
    dicts = load_spacenet_dicts(synthetic / "AOI_2_Vegas_Train")
    assert len(coco.getImgIds()) == len(dicts)
    assert len(coco.getAnnIds()) == sum(len(d["annotations"]) for d in dicts)
    ann = coco.loadAnns(coco.getAnnIds())[0]
    wkt_area = shapely.from_wkt(dicts[[d["image_id"] for d in dicts].index(
        coco.loadImgs(ann["image_id"])[0]["spacenet_image_id"])]["annotations"][0]["wkt_pix"]).area
    assert ann["area"] == pytest.approx(wkt_area)
    assert abs(int(coco.annToMask(ann).sum()) - wkt_area) < 0.1 * wkt_area + 20
    # image paths: absolute by default, relative to --image-root when given, and Detectron2's
    # COCO loader finds the files from any working directory either way
    from detectron2.data.datasets import load_coco_json

    assert all(Path(im["file_name"]).is_absolute() for im in coco.dataset["images"])
    rel = tmp_path / "rel.json"
    subprocess.run([sys.executable, str(repo_root / "tools" / "convert_spacenet_to_coco.py"),
                    "--aoi-root", str(synthetic / "AOI_2_Vegas_Train"), "--output", str(rel),
                    "--image-root", str(synthetic)], check=True, capture_output=True,
                   cwd=tmp_path)
    names = [im["file_name"] for im in json.loads(rel.read_text())["images"]]
    assert all(n.startswith("AOI_2_Vegas_Train/") for n in names)
    for json_file, root in ((out, ""), (rel, str(synthetic))):
        loaded = load_coco_json(str(json_file), root)
        assert len(loaded) == len(dicts) and all(Path(d["file_name"]).is_file() for d in loaded)


def test_one_band_rule_for_training_and_prediction(tmp_path):
    """A file with more bands than the model has channels trains and predicts on the same
    bands: INPUT.BANDS, else 1..len(PIXEL_MEAN), through one reader (window or whole file)."""
    from detectron2.config import get_cfg
    from rasterio.windows import Window

    from mnc_d2.config import add_mnc_config
    from mnc_d2.data import SpaceNetDatasetMapper, input_bands, read_bands

    tif = tmp_path / "four.tif"
    data = np.stack([np.full((8, 8), v, np.uint16) for v in (10, 20, 30, 40)])
    _write_tif(tif, data, Affine(1, 0, 0, 0, -1, 0))
    cfg = get_cfg()
    add_mnc_config(cfg)
    cfg.INPUT.BANDS = []
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]
    assert input_bands(cfg) == [1, 2, 3]
    mapper = SpaceNetDatasetMapper(cfg, is_train=False)
    assert mapper.bands == [1, 2, 3]
    whole = read_bands(str(tif), mapper.bands)
    with rasterio.open(tif) as src:
        window = read_bands(src, input_bands(cfg), window=Window(2, 2, 4, 4))
    assert whole.shape == (8, 8, 3) and whole[0, 0].tolist() == [10, 20, 30]
    assert np.array_equal(window, whole[2:6, 2:6])
    with pytest.raises(ValueError, match=r"reads bands \[1, 2, 3, 4, 5\].*has 4 band"):
        read_bands(str(tif), [1, 2, 3, 4, 5])


def test_auto_band_stats_with_empty_bands_fix_the_bands_in_the_config(tmp_path):
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog

    from mnc_d2.config import add_mnc_config
    from mnc_d2.data import input_bands, resolve_band_stats

    tif = tmp_path / "four.tif"
    _write_tif(tif, np.stack([np.full((8, 8), v, np.uint16) for v in (10, 20, 30, 40)]),
               Affine(1, 0, 0, 0, -1, 0))
    name = "_test_four_band_train"
    DatasetCatalog.register(name, lambda: [{"file_name": str(tif)}])
    try:
        cfg = get_cfg()
        add_mnc_config(cfg)
        cfg.DATASETS.TRAIN = (name,)
        cfg.INPUT.BANDS, cfg.INPUT.BAND_STATS, cfg.OUTPUT_DIR = [], "auto", str(tmp_path)
        stats = resolve_band_stats(cfg)
    finally:
        DatasetCatalog.remove(name)
    assert list(cfg.INPUT.BANDS) == [1, 2, 3, 4] == input_bands(cfg)
    assert cfg.MODEL.PIXEL_MEAN == pytest.approx([10, 20, 30, 40]) and stats["bands"] == [1, 2, 3, 4]

    # an RGBA file: the alpha band marks the data, it is no input (and its masked pixels are
    # left out of the statistics)
    rgba = tmp_path / "rgba.tif"
    alpha = np.full((8, 8), 255, np.uint16)
    alpha[:, :2] = 0
    bands = np.stack([np.full((8, 8), v, np.uint16) for v in (10, 20, 30)] + [alpha])
    bands[:3, :, :2] = 1000
    with rasterio.open(rgba, "w", driver="GTiff", height=8, width=8, count=4, dtype="uint16",
                       transform=Affine(1, 0, 0, 0, -1, 0), photometric="RGB",
                       alpha="YES") as dst:
        dst.write(bands)
    DatasetCatalog.register(name, lambda: [{"file_name": str(rgba)}])
    try:
        cfg.INPUT.BANDS = []
        stats = resolve_band_stats(cfg)
    finally:
        DatasetCatalog.remove(name)
    assert list(cfg.INPUT.BANDS) == [1, 2, 3] == stats["bands"]
    assert cfg.MODEL.PIXEL_MEAN == pytest.approx([10, 20, 30])


def test_band_photometric_transform_changes_values_not_geometry():
    from mnc_d2.data.transforms import BandPhotometricTransform

    rng = np.random.default_rng(0)
    img = rng.uniform(50, 1000, (8, 9, 3)).astype(np.float32)
    img[0, 0] = [7.0, 8.0, 9.0]  # a filled (nodata) pixel
    keep = [7.0, 8.0, 9.0]
    doubled = BandPhotometricTransform(2.0, 1.0, 1.0, [1.0, 1.0, 1.0], keep).apply_image(img)
    assert np.allclose(doubled[1:], 2 * img[1:]) and doubled[0, 0].tolist() == keep
    gains = BandPhotometricTransform(1.0, 1.0, 1.0, [0.5, 1.0, 2.0]).apply_image(img)
    assert np.allclose(gains, img * np.array([0.5, 1.0, 2.0], np.float32))
    flat = BandPhotometricTransform(1.0, 0.0, 1.0, [1.0] * 3).apply_image(img)
    assert np.allclose(flat, img.reshape(-1, 3).mean(0), rtol=1e-5)
    # gamma < 1 lifts dark values by a larger factor than bright ones; the maximum stays
    bent = BandPhotometricTransform(1.0, 1.0, 0.5, [1.0] * 3).apply_image(img)
    dark, bright = np.unravel_index(img[..., 0].argmin(), img.shape[:2]), \
        np.unravel_index(img[..., 0].argmax(), img.shape[:2])
    assert bent[dark][0] / img[dark][0] > bent[bright][0] / img[bright][0]
    assert bent[..., 0].max() == pytest.approx(img[..., 0].max())
    coords = np.array([[1.5, 2.5]])
    t = BandPhotometricTransform(1.3, 0.8, 1.2, [1.1, 0.9, 1.0])
    assert np.array_equal(t.apply_coords(coords), coords)
    mask = rng.integers(0, 2, (8, 9)).astype(np.uint8)
    assert np.array_equal(t.apply_segmentation(mask), mask)


def test_photometric_augmentation_from_config(tmp_path):
    from mnc_d2.data.transforms import RandomBandPhotometric

    cfg = _base_cfg()
    assert not any(isinstance(a, RandomBandPhotometric) for a in
                   SpaceNetDatasetMapper(cfg, is_train=True).augmentations.augs)
    cfg.INPUT.AUGMENT.GAMMA = (0.7, 1.4)
    cfg.INPUT.AUGMENT.BAND_GAIN = (0.9, 1.1)
    augs = SpaceNetDatasetMapper(cfg, is_train=True).augmentations.augs
    photometric = [a for a in augs if isinstance(a, RandomBandPhotometric)]
    assert len(photometric) == 1 and photometric[0].gamma == (0.7, 1.4)
    assert not any(isinstance(a, RandomBandPhotometric) for a in
                   SpaceNetDatasetMapper(cfg, is_train=False).augmentations.augs)
    cfg.INPUT.AUGMENT.CONTRAST = (1.2, 0.8)
    with pytest.raises(ValueError, match=r"INPUT.AUGMENT.CONTRAST=\(1.2, 0.8\)"):
        SpaceNetDatasetMapper(cfg, is_train=True)


def test_band_dropout_sets_the_listed_bands_to_their_mean_and_nothing_else(synthetic):
    """INPUT.AUGMENT.BAND_DROPOUT through the mapper on an 8-band tile: with PROB 1 the listed
    file bands come out as their PIXEL_MEAN (normalised 0) and the others as read; with PROB 0.5
    about half the images lose them; bands the model does not read are an error naming the key."""
    from mnc_d2.data.transforms import RandomBandDrop

    name = "_band_drop_8band"
    if name not in DatasetCatalog.list():
        register_spacenet_instances(name, synthetic / "AOI_2_Vegas_Train",
                                    product="MUL-PanSharpen")
    rec = DatasetCatalog.get(name)[0]
    cfg = _base_cfg(bands=4)
    cfg.INPUT.BANDS = [2, 3, 5, 7]
    cfg.MODEL.PIXEL_MEAN = [10.0, 20.0, 30.0, 40.0]
    cfg.INPUT.AUGMENT.HFLIP_PROB = cfg.INPUT.AUGMENT.VFLIP_PROB = 0.0
    cfg.INPUT.AUGMENT.ROT90 = False
    plain = SpaceNetDatasetMapper(cfg, is_train=True)(rec)["image"]
    cfg.INPUT.AUGMENT.BAND_DROPOUT.PROB = 1.0
    cfg.INPUT.AUGMENT.BAND_DROPOUT.BANDS = (7, 3)
    dropped = SpaceNetDatasetMapper(cfg, is_train=True)(rec)["image"]
    assert torch.equal(dropped[[0, 2]], plain[[0, 2]])  # bands 2 and 5: as read
    assert torch.all(dropped[3] == 40.0) and torch.all(dropped[1] == 20.0)
    assert plain[3].std() > 0 and plain[1].std() > 0  # they had texture to lose
    assert not any(isinstance(a, RandomBandDrop) for a in
                   SpaceNetDatasetMapper(cfg, is_train=False).augmentations.augs)
    cfg.INPUT.AUGMENT.BAND_DROPOUT.PROB = 0.5
    mapper = SpaceNetDatasetMapper(cfg, is_train=True)
    np.random.seed(0)
    lost = sum(bool(torch.all(mapper(rec)["image"][3] == 40.0)) for _ in range(40))
    assert 8 <= lost <= 32  # binomial(40, 0.5): outside this range with probability < 1e-4
    cfg.INPUT.AUGMENT.BAND_DROPOUT.BANDS = (6,)
    with pytest.raises(ValueError, match=r"BAND_DROPOUT.BANDS=\(6,\).*\[6\] are not among"):
        SpaceNetDatasetMapper(cfg, is_train=True)
    cfg.INPUT.AUGMENT.BAND_DROPOUT.BANDS = (2, 3, 5, 7)
    with pytest.raises(ValueError, match="drops every input band"):
        SpaceNetDatasetMapper(cfg, is_train=True)
    cfg.INPUT.AUGMENT.BAND_DROPOUT.BANDS = ()
    with pytest.raises(ValueError, match="needs INPUT.AUGMENT.BAND_DROPOUT.BANDS"):
        SpaceNetDatasetMapper(cfg, is_train=True)


def test_roof_gain_scales_the_chosen_footprints_and_nothing_else():
    """RandomRoofGain: a polygon footprint and an RLE footprint with a hole (a courtyard) are
    scaled inside, the courtyard and the rest of the image are not, nodata fill stays."""
    from pycocotools import mask as mask_util

    from mnc_d2.data.roof_gain import RandomRoofGain, footprint_mask

    rng = np.random.default_rng(0)
    img = rng.uniform(100, 1000, (20, 30, 3)).astype(np.float32)
    square = {"segmentation": [[2, 2, 8, 2, 8, 8, 2, 8]], "iscrowd": 0}
    ring = np.zeros((20, 30), dtype=np.uint8)
    ring[10:18, 15:25] = 1
    ring[12:16, 18:22] = 0  # courtyard
    rle = mask_util.encode(np.asfortranarray(ring))
    rle["counts"] = rle["counts"].decode("ascii")
    courtyard = {"segmentation": rle, "iscrowd": 0}
    crowd = {"segmentation": [[20, 0, 29, 0, 29, 5, 20, 5]], "iscrowd": 1}
    box_only = {"bbox": [0, 10, 5, 19], "iscrowd": 0}  # no footprint: left as it is
    inside = footprint_mask(square["segmentation"], 20, 30) | ring.astype(bool)
    assert footprint_mask(square["segmentation"], 20, 30).sum() == 36  # pixels 2..7 both ways
    img[3, 3] = 50.0  # a nodata pixel (filled with PIXEL_MEAN = 50) inside the square
    annos = [square, courtyard, crowd, box_only]
    out = RandomRoofGain(1.0, (0.5, 0.5), keep=[50.0] * 3)(img, annos)
    inside[3, 3] = False
    np.testing.assert_allclose(out[inside], img[inside] * 0.5)
    assert np.array_equal(out[~inside], img[~inside])  # courtyard, crowd region, ground
    assert np.all(out[3, 3] == 50.0)
    assert RandomRoofGain(1.0)(img, []) is img
    # rasterised in the footprint's window: the whole image's pixels, cut at its edges
    for poly in ([[3.3, 4.7, 17.2, 5.1, 16.6, 13.9, 9.4, 11.2, 2.8, 15.5]],
                 [[-4.5, -2.0, 6.2, -1.0, 5.5, 7.7, -3.0, 6.0]],
                 [[25.5, 15.2, 40.0, 16.0, 33.0, 30.0]]):
        whole = mask_util.decode(mask_util.merge(mask_util.frPyObjects(
            [np.asarray(p, dtype=np.float64) for p in poly], 20, 30))).astype(bool)
        assert whole.any() and np.array_equal(footprint_mask(poly, 20, 30), whole)
    assert not footprint_mask([[40, 30, 50, 30, 50, 40]], 20, 30).any()  # wholly outside
    with pytest.raises(ValueError, match="another raster"):
        footprint_mask(rle, 40, 30)


def test_roof_gain_draws_per_building_and_per_band():
    """Per band: the shared gain times a spread within [1/s, s]; per building: chosen with
    probability PROB; out-of-range settings are errors naming the key."""
    from mnc_d2.data.roof_gain import RandomRoofGain

    rng = np.random.RandomState(0)
    same = np.stack([RandomRoofGain(1.0, (0.2, 0.4)).draw_gains(8, rng) for _ in range(200)])
    assert np.allclose(same, same[:, :1]) and same.min() >= 0.2 and same.max() <= 0.4
    spread = np.stack([RandomRoofGain(1.0, (0.2, 0.4), 2.0).draw_gains(8, rng)
                       for _ in range(200)])
    assert spread.min() >= 0.1 and spread.max() <= 0.8
    assert np.ptp(spread, axis=1).min() > 0  # bands differ within a roof
    # 100 one-pixel buildings, PROB 0.3: binomial(100, 0.3) within 12-48 but with prob. < 1e-4
    img = np.ones((10, 40, 1), dtype=np.float32)
    annos = [{"segmentation": [[x, y, x + 1, y, x + 1, y + 1, x, y + 1]]}
             for y in range(0, 10, 2) for x in range(0, 40, 2)]
    changed = (RandomRoofGain(0.3, (0.5, 0.5))(img, annos, rng) != 1.0).sum()
    assert 12 <= changed <= 48
    for args, key in (((1.5,), "PROB=1.5"), ((0.5, (0.5, 0.2)), r"RANGE=\(0.5, 0.2\)"),
                      ((0.5, (0.1, 0.5), 0.5), "BAND_SPREAD=0.5")):
        with pytest.raises(ValueError, match=f"INPUT.AUGMENT.ROOF_GAIN.{key}"):
            RandomRoofGain(*args)


def test_roof_gain_through_the_mapper_at_training_only(synthetic):
    """INPUT.AUGMENT.ROOF_GAIN in the mapper: with PROB 1 every footprint of the tile as read is
    scaled and the ground is not; the inference mapper reads the tile as it is."""
    from mnc_d2.data.roof_gain import footprint_mask

    name = "_roof_gain_test"
    if name not in DatasetCatalog.list():
        register_spacenet_instances(name, synthetic / "AOI_2_Vegas_Train")
    rec = max(DatasetCatalog.get(name), key=lambda r: len(r["annotations"]))
    cfg = _base_cfg()
    cfg.INPUT.AUGMENT.HFLIP_PROB = cfg.INPUT.AUGMENT.VFLIP_PROB = 0.0
    cfg.INPUT.AUGMENT.ROT90 = False
    plain = SpaceNetDatasetMapper(cfg, is_train=True)(rec)["image"]
    cfg.INPUT.AUGMENT.ROOF_GAIN.PROB = 1.0
    cfg.INPUT.AUGMENT.ROOF_GAIN.RANGE = (0.25, 0.25)
    mapper = SpaceNetDatasetMapper(cfg, is_train=True)
    assert mapper.roof_gain is not None
    out = mapper(rec)
    roofs = torch.from_numpy(np.any([footprint_mask(a["segmentation"], 650, 650)
                                     for a in rec["annotations"]], axis=0))
    assert roofs.sum() > 1000
    assert torch.allclose(out["image"][:, roofs], plain[:, roofs] * 0.25)
    assert torch.equal(out["image"][:, ~roofs], plain[:, ~roofs])
    assert len(out["instances"]) == len(rec["annotations"])  # labels unchanged
    test = SpaceNetDatasetMapper(cfg, is_train=False)
    assert test.roof_gain is None and torch.equal(test(rec)["image"], plain)


def test_native_resolution_crop_gives_windows_with_the_visible_parts_boxes(synthetic):
    """INPUT.CROP cuts windows from the resized tile: native pixels, a smaller input; a building
    cut by the window gets its visible part's box; one outside it is dropped."""
    recs = DatasetCatalog.get("_crop_test") if "_crop_test" in DatasetCatalog.list() else None
    if recs is None:
        register_spacenet_instances("_crop_test", synthetic / "AOI_2_Vegas_Train")
        recs = DatasetCatalog.get("_crop_test")
    rec = max(recs, key=lambda r: len(r["annotations"]))
    cfg = _base_cfg()
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE = "absolute", [200, 300]
    cfg.INPUT.AUGMENT.HFLIP_PROB = cfg.INPUT.AUGMENT.VFLIP_PROB = 0.0
    cfg.INPUT.AUGMENT.ROT90 = False
    mapper = SpaceNetDatasetMapper(cfg, is_train=True)
    full = SpaceNetDatasetMapper(_base_cfg(), is_train=False)(rec)["image"]
    for _ in range(5):
        out = mapper(rec)
        image, inst = out["image"], out["instances"]
        assert image.shape[1:] == (200, 300)
        # native resolution: the window is a block of the full tile's pixels
        hits = [(y, x) for y in range(0, 651 - 200) for x in range(0, 651 - 300)
                if torch.equal(full[:, y, x], image[:, 0, 0])
                and torch.equal(full[:, y:y + 200, x:x + 300], image)]
        assert hits
        assert 0 < len(inst) < len(rec["annotations"])
        masks = inst.gt_masks.tensor
        assert masks.flatten(1).any(1).all()  # nothing left without a visible pixel
        assert torch.allclose(inst.gt_boxes.tensor, inst.gt_masks.get_bounding_boxes().tensor)
        assert (inst.gt_boxes.tensor[:, 2] <= 300).all() and (inst.gt_boxes.tensor[:, 3] <= 200).all()
    empty = mapper({**rec, "annotations": []})
    assert len(empty["instances"]) == 0 and empty["image"].shape[1:] == (200, 300)
