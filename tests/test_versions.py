"""SpaceNet releases as data: every entry of mnc_d2.data.versions is generated, inferred,
registered, loaded, split and scored the same way; a SpaceNet 4 folder is built around the real
Atlanta tile."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from detectron2.data import DatasetCatalog, MetadataCatalog

from mnc_d2.data.builtin import split_of
from mnc_d2.data.spacenet import load_spacenet_dicts, register_spacenet_instances
from mnc_d2.synthetic.releases import generate
from mnc_d2.data.versions import SPACENET1, SPACENET2, SPACENET4, VERSIONS, infer_version, nadir_bin
from mnc_d2.evaluation.spacenet_metric import score

REPO = Path(__file__).resolve().parents[1]
# Enough images that every split is non-empty: AOI_1_RIO_img18 and tile 736301_3725139 (the
# 7th) are the first in val.
COUNT = {"spacenet1": 18, "spacenet2": 3, "spacenet4": 7}


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> Path:
    """``<root>/spacenet`` holding a synthetic area folder of every release."""
    root = tmp_path_factory.mktemp("releases") / "spacenet"
    for name, count in COUNT.items():
        generate(name, root, count, seed=5, cities=("vegas",))
    return root


def _area(version) -> str:
    return version.areas[0].folder


@pytest.mark.parametrize("name", sorted(VERSIONS))
def test_each_release_is_inferred_registered_and_loaded(releases, name):
    version = VERSIONS[name]
    root = releases / _area(version)
    assert infer_version(root) is version
    register_spacenet_instances(f"_t_{name}", root)  # version inferred from the folder
    meta = MetadataCatalog.get(f"_t_{name}")
    assert (meta.version, meta.product, meta.labels) == (name, version.default_product,
                                                         version.labels)
    assert meta.group_by == version.group_by and meta.num_bands == version.product(None).bands
    dicts = DatasetCatalog.get(f"_t_{name}")
    views = 3 if name == "spacenet4" else 1  # SpaceNet 4: every tile in 3 collects
    assert len(dicts) == COUNT[name] * views
    for d in dicts:
        assert version.image_id_from_path(d["file_name"]) == d["image_id"]
        with rasterio.open(d["file_name"]) as src:
            assert (src.count, src.width, src.height) == (version.product(None).bands,
                                                          d["width"], d["height"])
        for ann in d["annotations"]:
            geom = shapely.from_wkt(ann["wkt_pix"])
            assert geom.is_valid and shapely.box(0, 0, d["width"], d["height"]).covers(geom)
    assert sum(len(d["annotations"]) for d in dicts) > 0


@pytest.mark.parametrize("name", sorted(VERSIONS))
def test_csv_and_geojson_labels_agree_on_every_product(releases, name):
    """The summary CSV (on one product's grid, scaled to the others) and the per-image GeoJSON
    (reprojected through each raster's own transform) give the same footprints."""
    version = VERSIONS[name]
    root = releases / _area(version)
    for product in version.products:
        by_csv = load_spacenet_dicts(root, product.name, "csv", version=name)
        by_geo = {d["image_id"]: d for d in load_spacenet_dicts(root, product.name, "geojson")}
        assert len(by_csv) == len(by_geo) > 0
        for d in by_csv:
            a = shapely.union_all([shapely.from_wkt(x["wkt_pix"]) for x in d["annotations"]])
            b = shapely.union_all([shapely.from_wkt(x["wkt_pix"])
                                   for x in by_geo[d["image_id"]]["annotations"]])
            assert len(d["annotations"]) == len(by_geo[d["image_id"]]["annotations"])
            if not a.is_empty:
                # Half a pixel of rounding at the coarsest grid (8band/MS/MUL) at most.
                tolerance = 0.6 * (d["width"] < 300) + 0.05
                assert a.symmetric_difference(b).area <= tolerance * a.length, (product.name,
                                                                                d["image_id"])


def test_inference_errors_name_the_folder_and_the_fix(releases, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        infer_version(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"spacenet4: .*Atlanta_nadir\*_catid_\*"):
        infer_version(tmp_path / "empty")
    both = tmp_path / "both"
    shutil.copytree(releases / _area(SPACENET1), both)
    shutil.copytree(releases / _area(SPACENET2) / "PAN", both / "PAN")
    with pytest.raises(ValueError, match="pass version="):
        register_spacenet_instances("_t_ambiguous", both)
    register_spacenet_instances("_t_explicit", both, version="spacenet1")  # resolved by hand
    assert MetadataCatalog.get("_t_explicit").version == "spacenet1"
    no_csv = tmp_path / "no_csv"
    shutil.copytree(releases / _area(SPACENET4), no_csv, ignore=shutil.ignore_patterns("*.csv"))
    with pytest.raises(FileNotFoundError,
                       match=r"no summary CSV .*\(looked for summaryData/\*\.csv\)"):
        load_spacenet_dicts(no_csv, labels="csv")
    with pytest.raises(ValueError, match="not a SpaceNet 4 product"):
        register_spacenet_instances("_t_bad_product", releases / _area(SPACENET4),
                                    product="RGB-PanSharpen", version="spacenet4")


def test_builtin_names_of_every_release(monkeypatch, releases):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(releases.parent))
    registered = set(DatasetCatalog.list())
    expected = {"spacenet1_rio_train", "spacenet1_rio_val_8band", "spacenet2_vegas_train",
                "spacenet2_all_val_8band", *(f"spacenet4_atlanta_{s}_{split}" for s in
                                             ("nadir", "offnadir", "veryoffnadir", "all")
                                             for split in ("train", "val"))}
    assert expected <= registered
    for name in ("spacenet1_rio", "spacenet4_atlanta_all"):
        train, val = DatasetCatalog.get(f"{name}_train"), DatasetCatalog.get(f"{name}_val")
        assert train and val
        assert not {d["image_id"] for d in train} & {d["image_id"] for d in val}
        assert len(train) + len(val) == len(load_spacenet_dicts(
            releases / _area(VERSIONS[name.split("_")[0]]), version=name.split("_")[0]))
    # SpaceNet 4 splits by tile: the views of one place are never on both sides.
    tiles = {split: {SPACENET4.split_key(d["image_id"]) for d in
                     DatasetCatalog.get(f"spacenet4_atlanta_all_{split}")}
             for split in ("train", "val")}
    assert tiles["val"] == {"736301_3725139"} and not tiles["train"] & tiles["val"]
    # Subsets keep the collects of one nadir segment.
    everything = (DatasetCatalog.get("spacenet4_atlanta_all_train")
                  + DatasetCatalog.get("spacenet4_atlanta_all_val"))
    for subset, segment in (("nadir", "Nadir"), ("offnadir", "Off-Nadir"),
                            ("veryoffnadir", "Very-Off-Nadir")):
        ids = {d["image_id"] for split in ("train", "val")
               for d in DatasetCatalog.get(f"spacenet4_atlanta_{subset}_{split}")}
        assert ids == {d["image_id"] for d in everything if nadir_bin(d["image_id"]) == segment}
        assert ids
    assert MetadataCatalog.get("spacenet4_atlanta_offnadir_val").group_by == "nadir"


def test_split_keys():
    a = "Atlanta_nadir7_catid_1030010003D22F00_733601_3725139"
    b = "Atlanta_nadir50_catid_10300100039E6200_733601_3725139"
    assert SPACENET4.split_key(a) == SPACENET4.split_key(b) == "733601_3725139"
    assert split_of(a, "spacenet4") == split_of(b, "spacenet4")
    assert SPACENET2.split_key("AOI_2_Vegas_img12") == "AOI_2_Vegas_img12"
    assert split_of("AOI_2_Vegas_img12") == SPACENET2.split_of("AOI_2_Vegas_img12")


def test_spacenet4_scores_by_nadir_segment(releases):
    """Truth of SpaceNet 4 scored against itself minus one view's buildings: groups are the
    three segments and the headline is the mean of their F1s."""
    dicts = load_spacenet_dicts(releases / _area(SPACENET4))
    rows = [(d["image_id"], i, shapely.from_wkt(a["wkt_pix"]))
            for d in dicts for i, a in enumerate(d["annotations"])]
    truth = pd.DataFrame(rows, columns=["ImageId", "BuildingId", "geometry"])
    keep = np.array([nadir_bin(i) != "Very-Off-Nadir" for i in truth.ImageId])
    props = truth[keep].assign(Confidence=1.0).reset_index(drop=True)
    result = score(truth, props)
    assert result.group_by == "nadir"
    assert set(result.cities) == {"Nadir", "Off-Nadir", "Very-Off-Nadir"}
    assert result.cities["Nadir"].f1 == 1.0 and result.cities["Very-Off-Nadir"].f1 == 0.0
    assert result.mean_city_f1 == pytest.approx(2 / 3)


def test_spacenet4_folder_around_the_real_atlanta_tile(spacenet_sample, tmp_path):
    """The real SpaceNet 4 tile (PAN, EPSG:32616, 0.5 m, origin 733601/3725139) in the released
    layout: inferred as SpaceNet 4, registered, its 43 footprints loaded inside the tile."""
    with rasterio.open(spacenet_sample / "sample_geotiff.tif") as src:
        x0, y0 = int(src.transform.c), int(src.transform.f)
    collect = "Atlanta_nadir10_catid_1030010003993E00"
    image_id = f"{collect}_{x0}_{y0}"
    root = tmp_path / SPACENET4.areas[0].folder
    (root / collect / "PAN").mkdir(parents=True)
    shutil.copy(spacenet_sample / "sample_geotiff.tif", root / collect / "PAN" /
                f"PAN_{image_id}.tif")
    labels = root / "geojson" / "spacenet-buildings" / f"spacenet-buildings_{x0}_{y0}.geojson"
    labels.parent.mkdir(parents=True)
    shutil.copy(spacenet_sample / "geotiff_labels.geojson", labels)
    assert infer_version(root).name == "spacenet4"
    register_spacenet_instances("_t_atlanta_real", root, product="PAN")
    meta = MetadataCatalog.get("_t_atlanta_real")
    assert (meta.version, meta.group_by, meta.aoi, meta.num_bands) == ("spacenet4", "nadir",
                                                                       "Atlanta", 1)
    (record,) = DatasetCatalog.get("_t_atlanta_real")
    assert record["image_id"] == image_id and (record["width"], record["height"]) == (900, 900)
    assert nadir_bin(record["image_id"]) == "Nadir"
    assert len(record["annotations"]) == 43
    tile = shapely.box(0, 0, 900, 900)
    footprints = [shapely.from_wkt(a["wkt_pix"]) for a in record["annotations"]]
    assert all(tile.covers(f) for f in footprints)
    # Pixel coordinates follow from the raster's transform: map -> pixel of the first label.
    first = json.loads(labels.read_text())["features"][0]["geometry"]["coordinates"][0][0]
    px, py = (first[0] - x0) / 0.5, (y0 - first[1]) / 0.5
    assert min(shapely.distance(shapely.Point(px, py), f.boundary) for f in footprints) < 1e-3


def test_prepare_script_writes_each_layout(tmp_path):
    for version, images in (("spacenet1", 1), ("spacenet4", 1)):
        subprocess.run([sys.executable, str(REPO / "datasets" / "prepare_synthetic_spacenet.py"),
                        "--out", str(tmp_path / "spacenet"), "--version", version, "--images",
                        str(images)], check=True, capture_output=True, timeout=300)
        assert infer_version(tmp_path / "spacenet" / _area(VERSIONS[version])).name == version


def test_evaluator_reports_the_release_groups_and_headline(releases):
    """SpaceNetEvaluator on a registered SpaceNet 4 folder (TEST.SPACENET.GROUP_BY auto): the
    registration's nadir grouping, per-segment keys and score = mean of the segment F1s."""
    import rasterio.features
    import torch
    from detectron2.structures import Boxes, Instances

    from mnc_d2.evaluation.spacenet_evaluation import SpaceNetEvaluator

    register_spacenet_instances("_t_sn4_eval", releases / _area(SPACENET4))
    evaluator = SpaceNetEvaluator("_t_sn4_eval", score_thresh=0.5, simplify_tolerance=0.0)
    evaluator.reset()
    for d in DatasetCatalog.get("_t_sn4_eval"):
        geoms = [shapely.from_wkt(a["wkt_pix"]) for a in d["annotations"]]
        if nadir_bin(d["image_id"]) == "Very-Off-Nadir":
            geoms = []  # this segment finds nothing
        inst = Instances((d["height"], d["width"]))
        masks = [rasterio.features.rasterize([g], out_shape=(d["height"], d["width"])) > 0
                 for g in geoms]
        inst.pred_masks = torch.from_numpy(np.array(masks, dtype=bool).reshape(
            len(geoms), d["height"], d["width"]))
        inst.pred_boxes = Boxes(torch.tensor([g.bounds for g in geoms],
                                             dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.ones(len(geoms))
        inst.pred_classes = torch.zeros(len(geoms), dtype=torch.int64)
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": inst}])
    res = evaluator.evaluate()["spacenet"]
    assert evaluator.group_by() == "nadir" and "mean_city_F1" not in res
    assert res["Nadir/F1"] > 0.9 and res["Off-Nadir/F1"] > 0.9 and res["Very-Off-Nadir/F1"] == 0
    mean = (res["Nadir/F1"] + res["Off-Nadir/F1"]) / 3
    assert res["score"] == pytest.approx(mean) and res["mean_nadir_F1"] == pytest.approx(mean)


def test_release_descriptions_and_formats_import_without_torch():
    """The release entries, label reading, synthetic generators and file formats are torch-free:
    preparing data or reading labels does not start torch or Detectron2."""
    code = ("import sys; import mnc_d2.data.versions, mnc_d2.data.labels, mnc_d2.data.bands, "
            "mnc_d2.synthetic.releases, mnc_d2.formats.spacenet_csv, mnc_d2.formats.geojson; "
            "print(sorted(m for m in ('torch', 'detectron2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "[]"
