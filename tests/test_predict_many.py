"""tools/predict.py over many scenes: bad scenes isolated, GeoParquet out, manifest, resume,
local and Ray engines writing the same outputs, a dead Ray worker recovered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
import torch
from rasterio.warp import transform_bounds

from mnc_d2.synthetic.spacenet2 import STYLES, generate_city, render_scene, tile_transform, to_dn
from mnc_d2.inference.run import main as predict_main
from mnc_d2.inference.scenes import expand_inputs

from test_engine import FAST, QUICK, REPO  # the tiny CPU training setup shared with its tests


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("d2data")
    generate_city(root / "spacenet", "vegas", 6, seed=1, progress=False)
    out = tmp_path_factory.mktemp("trained")
    env = dict(os.environ, DETECTRON2_DATASETS=str(root))
    subprocess.run([sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file",
                    str(QUICK), "OUTPUT_DIR", str(out), *FAST, "SOLVER.MAX_ITER", "2",
                    "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()"],
                   env=env, check=True, capture_output=True, timeout=600)
    return out


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> dict[str, Path]:
    """Two good scenes, then every kind of bad input."""
    folder = tmp_path_factory.mktemp("scenes")
    paths = {}
    for k in range(2):
        image, _, _ = render_scene(np.random.default_rng(k), STYLES["vegas"], size=160)
        path = folder / f"good{k}.tif"
        with rasterio.open(path, "w", driver="GTiff", height=160, width=160, count=3,
                           dtype="uint16", crs="EPSG:4326",
                           transform=tile_transform(STYLES["vegas"], 11 + k)) as dst:
            dst.write(to_dn(image)[[4, 2, 1]])
        paths[f"good{k}"] = path
    data = paths["good0"].read_bytes()
    (folder / "truncated.tif").write_bytes(data[: len(data) // 3])
    (folder / "notes.tif").write_text("not a GeoTIFF\n")
    with rasterio.open(folder / "nocrs.tif", "w", driver="GTiff", height=64, width=64, count=3,
                       dtype="uint16") as dst:
        dst.write(np.zeros((3, 64, 64), dtype=np.uint16))
    with rasterio.open(folder / "oneband.tif", "w", driver="GTiff", height=64, width=64,
                       count=1, dtype="uint16", crs="EPSG:4326",
                       transform=tile_transform(STYLES["vegas"], 3)) as dst:
        dst.write(np.zeros((1, 64, 64), dtype=np.uint16))
    for name in ("truncated", "notes", "nocrs", "oneband"):
        paths[name] = folder / f"{name}.tif"
    paths["missing"] = folder / "missing.tif"
    return paths


def _args(trained: Path, inputs: list[str], out: Path, *extra: str) -> list[str]:
    return ["--config-file", str(trained / "config.yaml"), "--input", *inputs, "--output",
            str(out), *extra, "MODEL.WEIGHTS", str(trained / "model_final.pth")]


def test_inputs_files_globs_and_lists(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("x.tif", "y.tif"):
        (tmp_path / "a" / name).write_bytes(b"")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.tif").write_bytes(b"")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# scenes\n{tmp_path / 'b' / 'x.tif'}\n\n{tmp_path / 'gone.tif'}\n")
    scenes = expand_inputs([str(tmp_path / "a" / "*.tif"), f"@{listing}",
                            str(tmp_path / "a" / "x.tif")])
    assert [Path(s.path).name for s in scenes] == ["x.tif", "y.tif", "x.tif", "gone.tif"]
    names = [s.name for s in scenes]
    assert len(set(names)) == 4 and names[1] == "y" and names[3] == "gone"
    assert names[0].startswith("x-") and names[2].startswith("x-")  # same stem, two folders


def test_local_run_isolates_bad_scenes_writes_geoparquet_and_resumes(tmp_path, trained,
                                                                     scenes):
    out = tmp_path / "out"
    inputs = [str(p) for p in scenes.values()]
    code = predict_main(_args(trained, inputs, out, "--score-thresh", "0.0", "--formats",
                              "parquet,geojson,csv", "--manifest-csv"))
    assert code == 1  # some scenes failed, the good ones were written
    manifest = pd.read_parquet(out / "manifest.parquet").set_index("scene")
    assert manifest.loc["good0", "status"] == "ok" and manifest.loc["good1", "status"] == "ok"
    for bad, words in {"truncated": "truncated", "notes": "not a readable GeoTIFF",
                       "nocrs": "no CRS", "oneband": "band", "missing": "does not exist"}.items():
        row = manifest.loc[bad]
        assert row.status == "failed" and str(scenes[bad]) in row.error, row.error
        assert words.lower() in row.error.lower() or bad == "truncated", row.error
    assert (out / "manifest.csv").is_file() and json.loads((out / "run.json").read_text())[
        "weights_sha256"]
    total = 0
    for name in ("good0", "good1"):
        frame = gpd.read_parquet(out / "buildings" / f"{name}.parquet")
        assert frame.crs.to_epsg() == 4326
        assert list(frame.columns) == ["scene", "building_id", "score", "area_m2", "geometry"]
        geo = json.loads(pq.read_schema(out / "buildings" / f"{name}.parquet").metadata[b"geo"])
        assert geo["version"] == "1.1.0" and "covering" in geo["columns"]["geometry"]
        with rasterio.open(scenes[name]) as src:
            footprint = shapely.box(*transform_bounds(src.crs, "EPSG:4326", *src.bounds))
        assert shapely.within(frame.geometry.to_numpy(), footprint.buffer(1e-9)).all()
        assert (frame.area_m2 > 0).all() and len(frame) == manifest.loc[name, "buildings"]
        assert (out / "geojson" / f"{name}.geojson").is_file()
        assert (out / "csv" / f"{name}.csv").is_file()
        total += len(frame)
    assert total > 0, "a score threshold of 0 should keep some detections"
    assert not list(out.rglob("*.tmp")) and not list((out / "buildings").glob(".*"))

    # Same command again: the good scenes are skipped, the failed ones tried again.
    mtime = (out / "buildings" / "good0.parquet").stat().st_mtime_ns
    code = predict_main(_args(trained, inputs, out, "--score-thresh", "0.0", "--formats",
                              "parquet,geojson,csv"))
    assert code == 1
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) == 2 * len(inputs)
    second = manifest.iloc[len(inputs):].set_index("scene")
    assert second.loc["good0", "status"] == "skipped" and second.loc["notes", "status"] == "failed"
    assert (out / "buildings" / "good0.parquet").stat().st_mtime_ns == mtime

    # Another model or config refuses to mix into the folder, unless --overwrite.
    assert predict_main(_args(trained, inputs[:1], out, "--score-thresh", "0.3")) == 2
    assert predict_main(_args(trained, inputs[:1], out, "--score-thresh", "0.3",
                              "--overwrite")) == 0
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) == 1 and not (out / "buildings" / "good1.parquet").exists()


def test_usage_errors_exit_2(tmp_path, trained):
    assert predict_main(_args(trained, [f"@{tmp_path / 'nope.txt'}"], tmp_path / "o")) == 2
    assert predict_main(_args(trained, ["x.tif"], tmp_path / "o", "--formats", "kml")) == 2


def test_ray_engine_writes_what_local_writes_and_survives_a_dead_worker(tmp_path, trained,
                                                                        scenes, monkeypatch):
    ray = pytest.importorskip("ray")
    good = [str(scenes["good0"]), str(scenes["good1"]), str(scenes["notes"])]
    local, remote = tmp_path / "local", tmp_path / "ray"
    # One torch thread in both engines: CPU results are bit-identical only for equal thread
    # counts (another count changes float32 reduction order: scores move by ~1e-7).
    threads = torch.get_num_threads()
    try:
        assert predict_main(_args(trained, good, local, "--score-thresh", "0.0",
                                  "--torch-threads", "1")) == 1
    finally:
        torch.set_num_threads(threads)
    marker = tmp_path / "died_once"
    monkeypatch.setenv("MNC_D2_FAULT_DIE_ONCE", str(marker))
    try:
        code = predict_main(_args(trained, good, remote, "--score-thresh", "0.0", "--engine",
                                  "ray", "--workers", "2", "--cpus-per-worker", "1",
                                  "--torch-threads", "1"))
    finally:
        ray.shutdown()
    assert code == 1
    assert marker.is_file(), "the fault hook did not kill a worker"
    rows = pd.read_parquet(remote / "manifest.parquet").set_index("scene")
    assert len(rows) == 3 and rows.status.tolist() == ["ok", "ok", "failed"]
    for name in ("good0", "good1"):
        a = gpd.read_parquet(local / "buildings" / f"{name}.parquet")
        b = gpd.read_parquet(remote / "buildings" / f"{name}.parquet")
        pd.testing.assert_frame_equal(a.drop(columns="geometry"), b.drop(columns="geometry"),
                                      check_exact=True)
        assert a.geometry.geom_equals_exact(b.geometry, tolerance=0).all()
        assert rows.loc[name, "buildings"] == len(b)


def test_merge_footprints_unions_buildings_across_scene_borders(tmp_path):
    from mnc_d2.inference.merge import merge_footprints
    from mnc_d2.inference.scenes import write_buildings_parquet

    crs = "EPSG:32611"  # metres; scene A covers x 500000..500100, B 500080..500180
    x0, y0 = 500000.0, 4000000.0

    def b(x1, y1, x2, y2):
        return shapely.box(x0 + x1, y0 + y1, x0 + x2, y0 + y2)

    scene_a = [b(10, 10, 20, 20), b(70, 20, 100, 40), b(85, 60, 95, 70)]
    scene_b = [b(80, 20, 120, 40), b(85, 60, 95, 70), b(150, 50, 160, 60)]
    folder = tmp_path / "pred"
    write_buildings_parquet(folder / "buildings" / "A.parquet", "A", scene_a, [0.9, 0.8, 0.6],
                            crs)
    write_buildings_parquet(folder / "buildings" / "B.parquet", "B", scene_b, [0.7, 0.95, 0.5],
                            crs)
    write_buildings_parquet(folder / "buildings" / "C.parquet", "C", [], [], crs)  # no buildings
    stats = merge_footprints(folder, tmp_path / "city.parquet")
    city = gpd.read_parquet(tmp_path / "city.parquet")
    assert stats == {"scenes": 3, "empty_scenes": 1, "read": 6, "written": 4, "merged_groups": 2}
    assert city.crs.to_epsg() == 4326 and city.building_id.tolist() == [0, 1, 2, 3]
    metric = city.to_crs(crs)
    areas = sorted(np.round(metric.area.to_numpy()).tolist())
    assert areas == [100.0, 100.0, 100.0, 1000.0]  # cut building 70..120 x 20..40 reassembled
    assert np.allclose(np.sort(city.area_m2.to_numpy()), [100, 100, 100, 1000], rtol=1e-3)
    merged = city[city.scenes == "A,B"]
    assert len(merged) == 2 and sorted(merged.score.tolist()) == [0.8, 0.95]  # the higher


def test_unloadable_weights_are_a_usage_error(tmp_path, trained, scenes):
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"not a checkpoint")
    args = _args(trained, [str(scenes["good0"])], tmp_path / "out")
    args[-1] = str(bad)
    assert predict_main(args) == 2


def test_merge_footprints_along_a_row_of_three_scenes(tmp_path):
    """Seams between A|B and B|C: each cut building is reassembled once, whatever the order in
    which the scenes are visited."""
    from mnc_d2.inference.merge import merge_footprints
    from mnc_d2.inference.scenes import write_buildings_parquet

    crs, x0, y0 = "EPSG:32611", 500000.0, 4000000.0

    def b(x1, x2):
        return shapely.box(x0 + x1, y0 + 10, x0 + x2, y0 + 20)

    folder = tmp_path / "pred"
    # A covers x 0..100, B 80..200, C 180..300 (building extents reach the borders).
    parts = {"A": [b(0, 10), b(70, 100)], "B": [b(80, 120), b(150, 200)], "C": [b(180, 230),
                                                                              b(290, 300)]}
    for name, geoms in parts.items():
        write_buildings_parquet(folder / "buildings" / f"{name}.parquet", name, geoms,
                                [0.5] * len(geoms), crs)
    stats = merge_footprints(folder, tmp_path / "city.parquet")
    city = gpd.read_parquet(tmp_path / "city.parquet").to_crs(crs)
    widths = sorted(np.round(city.bounds.maxx - city.bounds.minx).astype(int).tolist())
    assert widths == [10, 10, 50, 80]  # 70..120 and 150..230 reassembled, the ends untouched
    assert stats["merged_groups"] == 2 and stats["written"] == 4
