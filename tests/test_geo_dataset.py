"""Your own scenes and footprint files as datasets: windows, placement, formats, errors, and a
training run on them through DATASETS.GEO (the real SpaceNet 4 tile of ../shared/data)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.shutil
import shapely

from mnc_d2.data.geo_dataset import load_geo_dicts, register_geo_file
from mnc_d2.data.labels import LabelError
from mnc_d2.geometry.polygons import pixel_to_map

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "spacenet_sample"
TILE = SAMPLE / "sample_geotiff.tif"  # 900 x 900 px, 1 band, EPSG:32616, 0.5 m
LABELS = SAMPLE / "geotiff_labels.geojson"  # its 43 footprints

pytestmark = pytest.mark.skipif(not TILE.is_file(), reason="../shared/data is not here")


def _footprints_in_map(dicts) -> shapely.Geometry:
    """The union of every window's annotations, back in the scene's map coordinates."""
    pieces = []
    for d in dicts:
        transform = rasterio.Affine(*d["transform"])
        pieces += [pixel_to_map(shapely.from_wkt(a["wkt_pix"]), transform)
                   for a in d["annotations"]]
    return shapely.union_all(pieces)


def _truth_in_tile():
    with rasterio.open(TILE) as src:
        frame = gpd.read_file(LABELS).to_crs(src.crs)
        outline = shapely.box(*src.bounds)
    return shapely.intersection(shapely.union_all(frame.geometry.make_valid()), outline)


def test_windows_hold_the_footprints_where_they_are(tmp_path):
    dicts = load_geo_dicts([str(TILE)], LABELS, tile_size=450)
    assert [d["window"] for d in dicts] == [[0, 0, 450, 450], [450, 0, 450, 450],
                                            [0, 450, 450, 450], [450, 450, 450, 450]]
    assert len({d["image_id"] for d in dicts}) == 4
    # every footprint is somewhere (pieces of those cut by window edges, more than 43), and
    # together the pieces cover exactly the truth's area inside the tile
    assert sum(len(d["annotations"]) for d in dicts) >= 43
    truth, found = _truth_in_tile(), _footprints_in_map(dicts)
    assert found.area == pytest.approx(truth.area, rel=1e-3)
    assert shapely.symmetric_difference(found, truth).area < 1e-3 * truth.area
    # the same footprints from a GeoPackage in another CRS (WGS84), with heights (3D
    # coordinates, as CAD exports and SpaceNet's own GeoJSON have them): dropped, so each
    # segmentation is x, y pairs
    frame = gpd.read_file(LABELS).to_crs("EPSG:4326")
    frame["geometry"] = shapely.force_3d(frame.geometry.values, 12.5)
    frame.to_file(tmp_path / "labels.gpkg")
    dicts = load_geo_dicts([str(TILE)], tmp_path / "labels.gpkg", 450)
    assert shapely.symmetric_difference(_footprints_in_map(dicts), truth).area < \
        1e-3 * truth.area
    rings = [r for d in dicts for a in d["annotations"] for r in a["segmentation"]]
    assert all(len(r) % 2 == 0 and 12.5 not in r for r in rings)
    assert not any(" Z " in a["wkt_pix"] for d in dicts for a in d["annotations"])


def test_projected_geojson_naming_no_crs_takes_the_scenes(caplog):
    """The trap of the custom-projection pair: circles in the raster's Albers metres in a
    GeoJSON that names no CRS; they are placed in the raster's CRS, with a warning, not read as
    lon/lat (which would put every one outside)."""
    import logging

    labels_logger = logging.getLogger("mnc_d2.data.labels")  # it may not propagate to the root
    labels_logger.addHandler(caplog.handler)
    try:
        dicts = load_geo_dicts([str(SAMPLE / "sample_geotiff_custom_proj.tif")],
                               SAMPLE / "geotiff_custom_proj_labels.geojson", tile_size=512)
    finally:
        labels_logger.removeHandler(caplog.handler)
    assert len(dicts) == 1 and len(dicts[0]["annotations"]) == 19
    assert "names no CRS" in caplog.text


def test_the_mapper_reads_only_its_window():
    from detectron2.config import get_cfg

    from mnc_d2.config import add_mnc_config
    from mnc_d2.data.mapper import SpaceNetDatasetMapper

    cfg = get_cfg()
    add_mnc_config(cfg)
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = [300.0], [100.0]
    cfg.INPUT.MIN_SIZE_TEST = cfg.INPUT.MAX_SIZE_TEST = 450
    record = load_geo_dicts([str(TILE)], LABELS, tile_size=450)[1]  # columns 450-899
    image = SpaceNetDatasetMapper(cfg, is_train=False)(record)["image"]
    with rasterio.open(TILE) as src:
        expected = src.read(1)[:450, 450:900]
    assert tuple(image.shape) == (1, 450, 450)
    assert np.array_equal(image[0].numpy(), expected.astype(np.float32))


def test_scenes_where_they_live_train_from_their_urls(tmp_path, served, monkeypatch):
    """A DATASETS.GEO entry naming a COG and its footprint file by URL (a token in the COG's
    query string) gives the windows and footprints the local files give, and the mapper reads
    its windows over HTTP (with prediction's GDAL options: this server, like some object
    stores' signed URLs, answers no HEAD request); the token stays out of image ids; a glob
    in a URL is refused, naming the entry."""
    import shutil

    from mnc_d2.inference.engines import REMOTE_GDAL_DEFAULTS

    for key in REMOTE_GDAL_DEFAULTS:  # as they were, after the test
        monkeypatch.delenv(key, raising=False)

    import rasterio.shutil
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog

    from mnc_d2.config import add_mnc_config
    from mnc_d2.data.mapper import SpaceNetDatasetMapper

    rasterio.shutil.copy(TILE, tmp_path / "scene.tif", driver="COG", BLOCKSIZE="256")
    shutil.copy(LABELS, tmp_path / "labels.geojson")
    url = f"{served.url}/scene.tif?token=SECRET"
    spec = tmp_path / "remote.yaml"
    # GeoJSON: GDAL fetches it whole on opening it; a GeoPackage's later range reads would wait
    # on this in-process server's thread while pyogrio holds the GIL (checked by hand against a
    # server in another process: GeoPackage and FlatGeobuf URLs read the same 43 footprints)
    spec.write_text(f"_remote_train: {{scenes: ['{url}'], labels: "
                    f"'{served.url}/labels.geojson', tile_size: 450}}\n")
    try:
        assert register_geo_file(spec) == ["_remote_train"]
        remote = DatasetCatalog.get("_remote_train")
    finally:
        DatasetCatalog.remove("_remote_train")
    local = load_geo_dicts([str(tmp_path / "scene.tif")], LABELS, tile_size=450)
    assert [d["image_id"] for d in remote] == [d["image_id"] for d in local]
    assert remote[0]["image_id"].startswith("scene_") and remote[0]["file_name"] == url
    for a, b in zip(remote, local):
        assert {k: v for k, v in a.items() if k != "file_name"} == \
            {k: v for k, v in b.items() if k != "file_name"}
    cfg = get_cfg()
    add_mnc_config(cfg)
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = [300.0], [100.0]
    cfg.INPUT.MIN_SIZE_TEST = cfg.INPUT.MAX_SIZE_TEST = 450
    image = SpaceNetDatasetMapper(cfg, is_train=False)(remote[1])["image"]
    with rasterio.open(TILE) as src:
        expected = src.read(1)[:450, 450:900].astype(np.float32)
    expected[expected == 0] = 300.0  # the tile's nodata, filled with the band mean
    assert np.array_equal(image[0].numpy(), expected)
    assert served.sent.get("scene.tif", 0) > 0
    # what names a remote image in files and errors leaves its token out
    from mnc_d2.data.bands import dataset_image, read_bands
    from mnc_d2.export.quantize import calibration_name

    assert calibration_name(dataset_image(remote[1])) == \
        f"{served.url}/scene.tif?*** (window 450 0 450 450)"
    with pytest.raises(OSError, match=r"gone\.tif\?\*\*\* .*check the URL") as failed:
        read_bands(f"{served.url}/gone.tif?token=SECRET", [1])
    assert "SECRET" not in str(failed.value)
    spec.write_text(f"_remote_glob: {{scenes: ['{served.url}/*.tif'], labels: labels.geojson}}\n")
    with pytest.raises(ValueError, match=r"'_remote_glob' scenes http://.*/\*\.tif: a URL is one "
                                         "scene, not a pattern"):
        register_geo_file(spec)
    spec.write_text(f"_remote_gone: {{scenes: ['{served.url}/gone.tif?token=SECRET'], "
                    "labels: labels.geojson}\n")
    from mnc_d2.data.spacenet import RasterError

    with pytest.raises(RasterError, match=r"gone\.tif\?\*\*\* cannot be read .*check the URL") \
            as failed:
        register_geo_file(spec)
    assert "SECRET" not in str(failed.value)
    spec.write_text(f"_remote_parquet: {{scenes: ['{url}'], "
                    f"labels: '{served.url}/labels.parquet?token=SECRET'}}\n")
    with pytest.raises(LabelError, match=r"labels\.parquet\?\*\*\*: GeoParquet footprints are "
                                         "read from a local file"):
        DatasetCatalog.get(register_geo_file(spec)[0])
    DatasetCatalog.remove("_remote_parquet")


def test_scenes_listed_by_a_stac_item_collection(tmp_path, served, monkeypatch):
    """A STAC item collection among a DATASETS.GEO entry's scenes (a saved search, relative to
    the YAML) gives its items' data assets (one remote, one local); an item with two data
    assets needs the entry's stac_asset, and the error says so."""
    from detectron2.data import DatasetCatalog

    from mnc_d2.inference.engines import REMOTE_GDAL_DEFAULTS

    for key in REMOTE_GDAL_DEFAULTS:  # as they were, after the test
        monkeypatch.delenv(key, raising=False)

    rasterio.shutil.copy(TILE, tmp_path / "remote.tif", driver="COG", BLOCKSIZE="256")
    rasterio.shutil.copy(TILE, tmp_path / "local.tif", driver="GTiff")

    def item(name, href, extra=None):
        tiff = "image/tiff; application=geotiff"
        assets = {"data": {"href": href, "type": tiff, "roles": ["data"]},
                  "thumbnail": {"href": f"{name}.png", "type": "image/png"}, **(extra or {})}
        return {"type": "Feature", "stac_version": "1.0.0", "id": name, "geometry": None,
                "properties": {"datetime": "2020-01-01T00:00:00Z"}, "links": [],
                "assets": assets}

    search = {"type": "FeatureCollection", "features": [
        item("remote", f"{served.url}/remote.tif"), item("local", "local.tif")]}
    (tmp_path / "search.json").write_text(json.dumps(search))
    spec = tmp_path / "geo.yaml"
    spec.write_text(f"_stac_train: {{scenes: [search.json], labels: {LABELS}, tile_size: 450}}\n")
    try:
        register_geo_file(spec)
        dicts = DatasetCatalog.get("_stac_train")
    finally:
        DatasetCatalog.remove("_stac_train")
    files = sorted({d["file_name"] for d in dicts})
    assert files == sorted([f"{served.url}/remote.tif", f"{tmp_path}/local.tif"])
    assert len(dicts) == 8 and {d["image_id"][:6] for d in dicts} == {"remote", "local_"}
    # assets that share a file name (each item's folder holding its visual.tif): image ids
    # from the item ids, as predict.py names its outputs
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        rasterio.shutil.copy(TILE, tmp_path / folder / "visual.tif", driver="GTiff")
    shared = {"type": "FeatureCollection", "features": [
        item("item/a", "a/visual.tif"), item("item/b", "b/visual.tif")]}
    (tmp_path / "shared.json").write_text(json.dumps(shared))
    spec.write_text(f"_stac_shared: {{scenes: [shared.json], labels: {LABELS}, "
                    "tile_size: 900}\n")
    try:
        register_geo_file(spec)
        ids = [d["image_id"] for d in DatasetCatalog.get("_stac_shared")]
    finally:
        DatasetCatalog.remove("_stac_shared")
    assert ids == ["item_a_0_0", "item_b_0_0"]
    tiff = {"href": "other.tif", "type": "image/tiff", "roles": ["data"]}
    search["features"][1] = item("local", "local.tif", {"other": tiff})
    (tmp_path / "search.json").write_text(json.dumps(search))
    spec.write_text(f"_stac_two: {{scenes: [search.json], labels: {LABELS}}}\n")
    with pytest.raises(ValueError, match=r"item local has 2 GeoTIFF data assets \(data, other\); "
                                         r"pick one with 'stac_asset: KEY' in '_stac_two'"):
        register_geo_file(spec)
    spec.write_text(f"_stac_one: {{scenes: [search.json], labels: {LABELS}, "
                    "stac_asset: data}\n")
    try:
        assert register_geo_file(spec) == ["_stac_one"]
    finally:
        DatasetCatalog.remove("_stac_one")


def test_a_registered_dataset_is_read_once_while_its_files_stay_the_same(tmp_path,
                                                                         monkeypatch):
    """A run asks for its datasets several times (band statistics, loaders, the evaluator):
    the footprint file and the scenes are read once, each caller gets its own copy, and a
    changed footprint file is read again."""
    import os
    import shutil

    from detectron2.data import DatasetCatalog

    import mnc_d2.data.geo_dataset as geo

    labels = tmp_path / "labels.geojson"
    shutil.copy(LABELS, labels)
    loads = []
    real = geo.load_geo_dicts
    monkeypatch.setattr(geo, "load_geo_dicts", lambda *a: loads.append(a) or real(*a))
    geo.register_geo_instances("_once", [str(TILE)], labels, tile_size=450)
    try:
        first, second = DatasetCatalog.get("_once"), DatasetCatalog.get("_once")
        assert len(loads) == 1 and first == second and first is not second
        first[0]["annotations"].clear()  # a caller's change reaches no other caller
        assert DatasetCatalog.get("_once") == second and len(loads) == 1
        stamp = labels.stat().st_mtime_ns + 10 ** 9
        os.utime(labels, ns=(stamp, stamp))
        assert DatasetCatalog.get("_once") == second and len(loads) == 2
    finally:
        DatasetCatalog.remove("_once")


def test_bad_labels_and_files_say_which(tmp_path):
    frame = gpd.read_file(LABELS)
    frame.set_crs(None, allow_override=True).to_parquet(tmp_path / "nocrs.parquet")
    with pytest.raises(LabelError, match="nocrs.parquet has no CRS"):
        load_geo_dicts([str(TILE)], tmp_path / "nocrs.parquet")
    with pytest.raises(ValueError, match="scene names repeat"):
        load_geo_dicts([str(TILE), str(tmp_path / "sample_geotiff.tif")], LABELS)
    geo = tmp_path / "geo.yaml"
    geo.write_text("mine:\n  scenes: [nothing/*.tif]\n  labels: x.gpkg\n")
    with pytest.raises(FileNotFoundError, match=r"'mine' scenes .*nothing/\*.tif match no file"):
        register_geo_file(geo)
    geo.write_text(f"mine:\n  scenes: [{TILE}]\n  labels: {LABELS}\n  tiles: 3\n")
    with pytest.raises(ValueError, match="'mine' has unknown key"):
        register_geo_file(geo)


def test_train_and_evaluate_on_your_own_scene(tmp_path):
    """DATASETS.GEO registers the tile's windows; two iterations train and the SpaceNet
    evaluator scores the windows against the footprints (one group), band statistics, the
    tile's 0.5 m and the windows' 450 px (the scale prediction resizes by) recorded in the run's
    config."""
    geo = tmp_path / "geo.yaml"
    geo.write_text(f"atlanta_tile:\n  scenes: [{TILE}]\n  labels: {LABELS}\n  tile_size: 450\n")
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file",
           str(REPO / "configs" / "quick_schedules" / "mnc_R_18_FPN_quick_synthetic.yaml"),
           "OUTPUT_DIR", str(out), "DATASETS.GEO", str(geo),
           "DATASETS.TRAIN", "('atlanta_tile',)", "DATASETS.TEST", "('atlanta_tile',)",
           "INPUT.BANDS", "[1]", "MODEL.PIXEL_MEAN", "[300.0]", "MODEL.PIXEL_STD", "[100.0]",
           "INPUT.BAND_STATS",
           "auto", "SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "2", "SOLVER.IMS_PER_BATCH", "2",
           "MODEL.DEVICE", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    scored = [m for m in metrics if "spacenet/score" in m]
    assert scored and "spacenet/F1" in scored[-1]
    truth = scored[-1]["spacenet/TP"] + scored[-1]["spacenet/FN"]
    assert truth >= 43  # the windows' footprint pieces
    config = (out / "config.yaml").read_text()
    assert "TRAIN_TILE_SIZE: 450" in config
    assert "GSD: 0.5" in config and json.loads((out / "band_stats.json").read_text())["bands"] \
        == [1]


def test_scenes_of_mixed_pixel_sizes_are_named_in_a_warning(tmp_path, caplog):
    """Training reads each scene at its own pixel size while the run records one INPUT.GSD
    (the first scene's) that prediction resamples to: scenes whose pixel sizes differ beyond
    prediction's 5% tolerance get a warning naming both ends and the fix; equal ones none (and
    footprints cut by window edges are no warning either)."""
    from rasterio.enums import Resampling

    coarse = tmp_path / "coarse.tif"
    with rasterio.open(TILE) as src:
        profile = dict(src.profile, width=600, height=600,
                       transform=src.transform * src.transform.scale(1.5))
        with rasterio.open(coarse, "w", **profile) as dst:
            dst.write(src.read(out_shape=(src.count, 600, 600), resampling=Resampling.bilinear))
    with caplog.at_level("INFO"):
        load_geo_dicts([str(TILE)], LABELS, tile_size=450)
    assert "pixel size" not in caplog.text
    # footprints cut by window edges are the design here, counted at INFO, not label repairs
    warned = "".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "crossing the tile edge" not in warned, warned
    assert re.search(r"4 windows of 450 px, \d+ footprint pieces \([1-9]\d* cut by a window "
                     "edge", caplog.text), caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="mnc_d2.data.geo_dataset"):
        load_geo_dicts([str(TILE), str(coarse)], LABELS, tile_size=450)
    said = [r.getMessage() for r in caplog.records if "pixel size" in r.getMessage()]
    assert len(said) == 1, caplog.text
    assert f"0.5 m ({TILE})" in said[0] and f"0.75 m ({coarse})" in said[0], said[0]
    assert "records one INPUT.GSD, the first's (0.5 m)" in said[0]
    assert "gdalwarp -tr 0.5 0.5" in said[0]


def test_labels_that_miss_every_scene_are_an_error_naming_both_places(tmp_path):
    """Footprints of another place, or in another CRS than their file says, trained a model on
    background alone (every window empty) and scored it against no building, without a word;
    now an error giving the labels' and the scene's bounds in one CRS. An empty footprint file
    still registers scenes without buildings on purpose."""
    frame = gpd.read_file(LABELS)
    with rasterio.open(TILE) as src:
        frame = frame.to_crs(src.crs)
    frame["geometry"] = frame.geometry.translate(50_000, 0)  # 50 km east
    moved = tmp_path / "moved.gpkg"
    frame.to_file(moved)
    with pytest.raises(LabelError) as err:
        load_geo_dicts([str(TILE)], moved, tile_size=450)
    said = str(err.value)
    assert said.startswith(f"none of the {len(frame)} footprints of {moved} (bounds (")
    assert "in EPSG:32616) lies on the 1 scene(s) (sample_geotiff.tif; the first covers (" in said
    assert "another CRS than the file says" in said and "empty footprint file" in said
    empty = tmp_path / "none.parquet"
    gpd.GeoDataFrame(geometry=[], crs=frame.crs).to_parquet(empty)
    dicts = load_geo_dicts([str(TILE)], empty, tile_size=450)
    assert len(dicts) == 4 and not any(d["annotations"] for d in dicts)


def test_scenes_without_any_footprint_beside_labelled_ones_are_warned_about(tmp_path, caplog):
    """A footprint file that covers one scene but not another (an area's labels left out of
    it) trains the other's buildings as background: a warning names the bare scenes; none
    when every scene has footprints."""
    away = tmp_path / "away.tif"
    with rasterio.open(TILE) as src:
        profile = dict(src.profile, transform=rasterio.Affine.translation(50_000, 0)
                       * src.transform)  # the same pixels 50 km east, where no label lies
        with rasterio.open(away, "w", **profile) as dst:
            dst.write(src.read())
    with caplog.at_level("WARNING", logger="mnc_d2.data.geo_dataset"):
        load_geo_dicts([str(TILE)], LABELS, tile_size=450)
    assert "no footprint" not in caplog.text
    with caplog.at_level("WARNING", logger="mnc_d2.data.geo_dataset"):
        dicts = load_geo_dicts([str(TILE), str(away)], LABELS, tile_size=450)
    assert len(dicts) == 8
    said = [r.getMessage() for r in caplog.records if "no footprint" in r.getMessage()]
    assert len(said) == 1, caplog.text
    assert said[0].startswith(f"1 of 2 scenes have no footprint of {LABELS} on them "
                              "(away.tif): they train as background only"), said[0]


@pytest.mark.parametrize("overview_px", [1024, 100])
def test_windows_without_data_are_left_out(tmp_path, caplog, monkeypatch, overview_px):
    """An orthorectified scene's collar (nodata): windows wholly in it would train on blank
    images of band means; they are left out, the windows holding any data kept (also when
    found through a coarse mask, whose candidates are checked at full resolution: a window
    with a sliver of data stays). A scene wholly without data is left out with a warning."""
    import mnc_d2.data.geo_dataset as geo

    monkeypatch.setattr(geo, "MASK_OVERVIEW_PX", overview_px)
    collared = tmp_path / "collared.tif"
    with rasterio.open(TILE) as src:
        profile, data = src.profile, src.read()
    assert profile["nodata"] == 0
    data[:, :, :450] = 0  # windows at column 0: no data
    data[:, 449:451, :] = 0
    data[:, 600, 450] = 7  # one pixel of data in the window at (450, 450) (rows 450-899)
    data[:, 450:, 451:] = 0
    with rasterio.open(collared, "w", **profile) as dst:
        dst.write(data)
    with caplog.at_level("INFO", logger="mnc_d2.data.geo_dataset"):
        dicts = load_geo_dicts([str(collared)], LABELS, tile_size=450)
    assert sorted(d["window"][:2] for d in dicts) == [[450, 0], [450, 450]]
    assert "; 2 windows without a pixel of data left out" in caplog.text
    empty = tmp_path / "empty.tif"
    with rasterio.open(empty, "w", **profile) as dst:
        dst.write(np.zeros_like(data))
    caplog.clear()
    with caplog.at_level("INFO", logger="mnc_d2.data.geo_dataset"):
        dicts = load_geo_dicts([str(collared), str(empty)], LABELS, tile_size=450)
    assert len(dicts) == 2
    assert f"{empty} holds no pixel of data (its nodata value or mask covers it all): left " \
        "out" in caplog.text
    assert "no footprint" not in caplog.text


def test_footprints_under_a_nodata_collar_are_left_out(tmp_path, caplog):
    """A window half in a collar: the footprints with most of their area under the nodata
    (where the model sees band means) are no training or evaluation truth, by predict.py's
    rule for detections; the others stay, a piece reaching into the collar whole."""
    from mnc_d2.data.geo_dataset import FootprintFile
    from mnc_d2.data.labels import RepairLog
    from mnc_d2.geometry.on_data import MAX_OUTSIDE_DATA

    collared = tmp_path / "collared.tif"
    with rasterio.open(TILE) as src:
        profile, data = src.profile, src.read()
        footprints = FootprintFile(LABELS).pixel_polygons(src.crs, src.transform, src.width,
                                                          src.height, RepairLog(), RepairLog())
    data[:, :, 500:] = 0  # columns 500-899: a collar
    with rasterio.open(collared, "w", **profile) as dst:
        dst.write(data)
    plain = load_geo_dicts([str(TILE)], LABELS, tile_size=900)
    with caplog.at_level("INFO", logger="mnc_d2.data.geo_dataset"):
        dicts = load_geo_dicts([str(collared)], LABELS, tile_size=900)
    collar = shapely.box(500, 0, 900, 900)
    under = [f for f in footprints if shapely.area(shapely.intersection(f, collar))
             > MAX_OUTSIDE_DATA * f.area]
    straddling = [f for f in footprints if 0 < shapely.area(shapely.intersection(f, collar))
                  <= MAX_OUTSIDE_DATA * f.area]
    assert under and straddling  # the case is not vacuous
    assert len(dicts[0]["annotations"]) == len(plain[0]["annotations"]) - len(under)
    assert f"; {len(under)} footprint pieces with most of their area under nodata left out" \
        in caplog.text
    boxes = [a["bbox"] for a in dicts[0]["annotations"]]
    assert sum(b[2] > 500 for b in boxes) == len(straddling)  # reaching into it, kept (XYXY)


def test_footprints_cut_by_the_scene_edge_are_no_label_repair(tmp_path, caplog):
    """A scene cut out of a larger labelled area cuts the footprints across its edge by
    design (as windows do): counted at INFO with the window cuts, not warned about as label
    repairs."""
    from rasterio.windows import Window

    part = tmp_path / "part.tif"
    with rasterio.open(TILE) as src:
        window = Window(150, 150, 600, 600)
        profile = dict(src.profile, width=600, height=600,
                       transform=src.window_transform(window))
        with rasterio.open(part, "w", **profile) as dst:
            dst.write(src.read(window=window))
    with caplog.at_level("INFO"):
        load_geo_dicts([str(part)], LABELS, tile_size=600)  # one window: the scene
    warned = "".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "crossing the tile edge" not in warned, warned
    assert re.search(r"1 windows of 600 px, \d+ footprint pieces \([1-9]\d* cut by a window "
                     "edge", caplog.text), caplog.text


def test_registration_records_the_windows_side():
    """The windows' side, which a run records as INPUT.TRAIN_TILE_SIZE (the scale prediction
    resizes every tile by): tile_size, or, for scenes smaller than it (chips, each one window of
    its own size), the first scene's shorter side."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from mnc_d2.data.geo_dataset import register_geo_instances

    for name, tile_size, side in (("side_450_test", 450, 450), ("side_chips_test", 2000, 900)):
        if name not in DatasetCatalog.list():
            register_geo_instances(name, [str(TILE)], LABELS, tile_size=tile_size)
        assert MetadataCatalog.get(name).tile_px == side


def test_int8_calibration_reads_each_window_of_own_scenes():
    """Export's int8 calibration on a DATASETS.GEO run: each window of the scene is its own
    calibration image (it read the scene's top-left corner once per window: one tile, four
    times), recorded by window in export.json."""
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog

    from mnc_d2.config import add_mnc_config
    from mnc_d2.data.geo_dataset import register_geo_instances
    from mnc_d2.export.quantize import calibration_files, calibration_name, calibration_tiles

    name = "calibration_windows_test"
    if name not in DatasetCatalog.list():
        register_geo_instances(name, [str(TILE)], LABELS, tile_size=450)
    cfg = get_cfg()
    add_mnc_config(cfg)
    cfg.DATASETS.TRAIN = (name,)
    items = calibration_files(cfg, 4)
    assert [window for _, window in items] == [(0, 0, 450, 450), (450, 0, 450, 450),
                                               (0, 450, 450, 450), (450, 450, 450, 450)]
    assert calibration_name(items[1]) == f"{TILE} (window 450 0 450 450)"
    tiles = calibration_tiles(items, [1], [300.0], 450)
    assert all(not np.array_equal(tiles[0], t) for t in tiles[1:])
    with rasterio.open(TILE) as src:  # the second is the window at column 450
        second = src.read(1, window=rasterio.windows.Window(450, 0, 450, 450))
    assert np.array_equal(tiles[1][0, 0], second.astype(np.float32))


def test_int8_export_of_an_own_scene_run_registers_its_scenes_to_calibrate(tmp_path):
    """export_model.py sets up without registering datasets (an exported model needs none),
    but int8 calibration reads the training windows: from the run's DATASETS.GEO, registered
    then; a DATASETS.GEO that is not here is an error naming it and --calibration."""
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog

    from mnc_d2.config import add_mnc_config
    from mnc_d2.export.quantize import ExportError, calibration_files

    spec = tmp_path / "geo.yaml"
    spec.write_text(f"_export_calib: {{scenes: [{TILE}], labels: {LABELS}, tile_size: 450}}\n")
    cfg = get_cfg()
    add_mnc_config(cfg)
    cfg.DATASETS.GEO, cfg.DATASETS.TRAIN = str(spec), ("_export_calib",)
    assert "_export_calib" not in DatasetCatalog.list()
    try:
        items = calibration_files(cfg, 2)
    finally:
        DatasetCatalog.remove("_export_calib")
    assert items == [(str(TILE), (0, 0, 450, 450)), (str(TILE), (0, 450, 450, 450))]
    cfg.DATASETS.GEO = str(tmp_path / "elsewhere.yaml")
    with pytest.raises(ExportError, match=r"DATASETS.GEO .*elsewhere.yaml, which cannot be read "
                                          r"here .*pass --calibration"):
        calibration_files(cfg, 2)


def test_band_statistics_of_own_scenes_read_a_window_at_a_time(tmp_path):
    """INPUT.BAND_STATS auto on DATASETS.GEO reads the scenes' windows, never a whole scene
    (a provider's scene of 40,000 px a side would not fit in memory as float64): the four
    windows that partition the tile give the whole tile's statistics, and one window alone
    its own."""
    from detectron2.config import get_cfg

    from mnc_d2.config import add_mnc_config
    from mnc_d2.data.band_stats import compute_band_stats, resolve_band_stats
    from mnc_d2.data.geo_dataset import register_geo_instances

    name = "band_stats_windows_test"
    register_geo_instances(name, [str(TILE)], LABELS, tile_size=450)
    cfg = get_cfg()
    add_mnc_config(cfg)
    cfg.DATASETS.TRAIN = (name,)
    cfg.INPUT.BANDS = [1]
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = [0.0], [1.0]
    cfg.INPUT.BAND_STATS = "auto"
    cfg.OUTPUT_DIR = str(tmp_path)
    stats = resolve_band_stats(cfg)
    whole = compute_band_stats([str(TILE)], [1])
    assert stats["num_images"] == 4 and whole["num_images"] == 1
    assert np.allclose(stats["mean"], whole["mean"], rtol=1e-9)
    assert np.allclose(stats["std"], whole["std"], rtol=1e-9)
    one = compute_band_stats([(str(TILE), (0, 0, 450, 450))], [1])
    with rasterio.open(TILE) as src:
        corner = src.read(1, window=rasterio.windows.Window(0, 0, 450, 450), masked=True)
    assert np.isclose(one["mean"][0], float(corner.mean()), rtol=1e-9)


def test_copy_paste_moves_a_real_scenes_roof_within_its_windows():
    """Copy-paste on windows of a real scene: the donor is read through its window, and the
    pasted pixels are exactly the donor footprint's (scale 1), where the new label says."""
    from pycocotools import mask as mask_util

    from mnc_d2.data.copy_paste import RandomCopyPaste
    from mnc_d2.data.mapper import _Reader
    from mnc_d2.data.roof_gain import footprint_mask

    dicts = load_geo_dicts([str(TILE)], LABELS, tile_size=450)
    donor = next(d for d in dicts[1:] if d["annotations"])
    read = _Reader([1], [0.0])
    donor_image = read(donor)
    target = read(dicts[0])
    anno = next(a for a in donor["annotations"] if a.get("segmentation"))
    footprint = footprint_mask(anno["segmentation"], 450, 450)
    paste = RandomCopyPaste([{**donor, "annotations": [anno]}], read, prob=1.0,
                            object_prob=1.0, max_objects=1, scale_range=(1.0, 1.0))
    out, annos = paste(target, dicts[0]["annotations"], rng=np.random.RandomState(0))
    assert len(annos) == len(dicts[0]["annotations"]) + 1
    pasted = mask_util.decode(annos[-1]["segmentation"]).astype(bool)
    assert pasted.sum() == footprint.sum() > 0
    assert np.array_equal(np.sort(out[pasted][:, 0]), np.sort(donor_image[footprint][:, 0]))
    assert np.array_equal(out[~pasted], target[~pasted])
