"""tools/predict.py over many scenes: bad scenes isolated, GeoParquet out, manifest, resume,
local and Ray engines writing the same outputs, a dead Ray worker recovered."""

from __future__ import annotations

import json
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import rasterio
import rasterio.shutil
import rasterio.transform
import rasterio.windows
import shapely
import torch
from rasterio.warp import transform_bounds

from mnc_d2.synthetic.spacenet2 import STYLES, generate_city, render_scene, tile_transform, to_dn
from mnc_d2.inference.run import main as predict_main
from mnc_d2.inference.scenes import UsageError, expand_inputs

from test_engine import train_quick  # the tiny CPU training setup shared with its tests

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("d2data")
    generate_city(root / "spacenet", "vegas", 6, seed=1, progress=False)
    return train_quick(root, tmp_path_factory.mktemp("trained"), iters=2)


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
    # a folder: its imagery files (any case of .tif/.tiff/.vrt), not its other files or subfolders
    for name in ("c.TIFF", "d.vrt", "notes.txt", "sub/e.tif"):
        (tmp_path / "a" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "a" / name).write_bytes(b"")
    assert [Path(s.path).name for s in expand_inputs([str(tmp_path / "a")])] == [
        "c.TIFF", "d.vrt", "x.tif", "y.tif"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"input folder .*empty holds no .tif/.tiff/.vrt file; "
                                         r"for files deeper in it pass a glob"):
        expand_inputs([str(tmp_path / "empty")])


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
        assert list(frame.columns) == ["scene", "building_id", "score", "area_m2", "datetime",
                                       "view_angle", "geometry"]
        assert str(frame.datetime.dtype) == "datetime64[us, UTC]"
        assert frame.datetime.isna().all() and frame.view_angle.isna().all()  # not known here
        schema = pq.read_schema(out / "buildings" / f"{name}.parquet")
        geo = json.loads(schema.metadata[b"geo"])
        made_by = json.loads(schema.metadata[b"mnc_d2"])
        assert made_by["weights_sha256"] == json.loads((out / "run.json").read_text())[
            "weights_sha256"] and made_by["score_thresh"] == 0.0 and made_by["mnc_d2_version"]
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
    # a finished scene's file damaged since (an interrupted copy): predicted again, not skipped
    kept = (out / "buildings" / "good1.parquet").read_bytes()
    (out / "buildings" / "good1.parquet").write_bytes(kept[:len(kept) // 2])
    assert predict_main(_args(trained, inputs[:2], out, "--score-thresh", "0.0", "--formats",
                              "parquet,geojson,csv")) == 0
    third = pd.read_parquet(out / "manifest.parquet").iloc[-2:].set_index("scene")
    assert third.status.to_dict() == {"good0": "skipped", "good1": "ok"}, third
    assert len(gpd.read_parquet(out / "buildings" / "good1.parquet")) == manifest.loc[
        manifest.scene == "good1", "buildings"].iloc[0]

    # Another model or config refuses to mix into the folder, unless --overwrite.
    assert predict_main(_args(trained, inputs[:1], out, "--score-thresh", "0.3")) == 2
    assert predict_main(_args(trained, inputs[:1], out, "--score-thresh", "0.3",
                              "--overwrite")) == 0
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) == 1 and not (out / "buildings" / "good1.parquet").exists()


def test_usage_errors_exit_2(tmp_path, trained, capsys):
    assert predict_main(_args(trained, [f"@{tmp_path / 'nope.txt'}"], tmp_path / "o")) == 2
    assert predict_main(_args(trained, ["x.tif"], tmp_path / "o", "--formats", "kml")) == 2
    assert predict_main(_args(trained, ["x.tif"], tmp_path / "o", "--max-upsample", "0.5")) == 2
    # tiling, batching and pool sizes that cannot work: one line before any scene or output
    for bad, said in ((("--tile-size", "256", "--overlap", "300"),
                       "--overlap 300 must be in [0, --tile-size 256)"),
                      (("--batch-size", "0"), "--batch-size 0 must be at least 1"),
                      (("--score-thresh", "1.5"), "--score-thresh 1.5 must be in [0, 1]"),
                      (("--engine", "ray", "--workers", "0"), "--workers 0 must be at least 1")):
        capsys.readouterr()
        assert predict_main(_args(trained, ["x.tif"], tmp_path / "n", *bad)) == 2
        assert said in capsys.readouterr().err
    assert not (tmp_path / "n").exists()


def test_overrides_may_follow_the_input_paths(tmp_path, trained, scenes, capsys):
    """``--input a.tif MODEL.WEIGHTS w.pth`` as the last option: argparse would take the
    overrides as two more scenes (and report no weights); they are split off."""
    weights = ["MODEL.WEIGHTS", str(trained / "model_final.pth")]
    assert predict_main(["--config-file", str(trained / "config.yaml"), "--output",
                         str(tmp_path / "o"), "--input", str(scenes["good0"]), *weights]) == 0
    rows = pd.read_parquet(tmp_path / "o" / "manifest.parquet")
    assert rows.status.tolist() == ["ok"]
    assert predict_main(["--config-file", str(trained / "config.yaml"), "--output",
                         str(tmp_path / "p"), "--input", *weights]) == 2
    assert "--input: give the scenes before the KEY VALUE overrides" in capsys.readouterr().err


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


def test_a_scene_written_where_this_machine_cannot_see_it_is_failed(tmp_path):
    """A Ray worker on another node writes into its own folder when --output is not shared:
    the driver must not report that scene done (its buildings would be on another machine)."""
    from mnc_d2.inference.engines import outputs_seen_here
    from mnc_d2.inference.scenes import Scene, SceneRow, parquet_path

    here, there, broken = (Scene(f"/data/{n}.tif", n) for n in ("here", "there", "broken"))
    parquet_path(tmp_path, here).parent.mkdir(parents=True)
    parquet_path(tmp_path, here).write_bytes(b"PAR1")
    rows = [SceneRow("here", here.path, "ok", 5, worker="node-a:11"),
            SceneRow("there", there.path, "ok", 7, worker="node-b:12"),
            SceneRow("broken", broken.path, "failed", error="not a GeoTIFF")]
    out = outputs_seen_here(rows, [here, there, broken], tmp_path)
    assert [r.status for r in out] == ["ok", "failed", "failed"]
    assert out[0] == rows[0] and out[2] == rows[2]
    assert out[1].buildings == 0 and "node-b" in out[1].error and "shared" in out[1].error
    assert str(tmp_path) in out[1].error


def test_ray_workers_asking_for_what_the_machine_lacks_fail_at_once(tmp_path, trained,
                                                                    scenes):
    """Ray waits forever for resources no node has: an in-process Ray fails with a usage error
    instead (a joined cluster only warns: its autoscaler may add the nodes)."""
    from mnc_d2.inference.engines import (RayResourceError, actor_device,
                                          check_ray_resources)

    cpu_only = {"CPU": 2.0}
    check_ray_resources(cpu_only, 1, 0, own_cluster=True)
    with pytest.raises(RayResourceError, match="--gpus-per-worker 1 but it has 0 GPU"):
        check_ray_resources(cpu_only, 1, 1, own_cluster=True)
    with pytest.raises(RayResourceError, match="--cpus-per-worker 4 but it has 2 CPU"):
        check_ray_resources(cpu_only, 4, 0, own_cluster=True)
    check_ray_resources(cpu_only, 4, 1, own_cluster=False)  # a warning, not an error
    check_ray_resources({"CPU": 8.0, "GPU": 2.0}, 4, 0.5, own_cluster=True)
    # an actor holding a GPU runs the eager model there, whatever the config recorded
    assert actor_device("cpu", 1, True) == "cuda"
    assert actor_device("cpu", 1, False) == "cpu"
    assert actor_device("cpu", 0, True) == "cpu"
    assert actor_device("cuda:1", 1, True) == "cuda:1"
    pytest.importorskip("ray")
    import ray

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the request is satisfiable")
    try:
        assert predict_main(_args(trained, [str(scenes["good0"])], tmp_path / "o", "--engine",
                                  "ray", "--workers", "1", "--gpus-per-worker", "1")) == 2
    finally:
        ray.shutdown()
    assert not (tmp_path / "o" / "manifest.parquet").exists()


def test_a_ray_address_where_nothing_answers_fails_at_once(tmp_path, trained, scenes, capsys,
                                                           monkeypatch):
    """ray.init retries an address without a cluster for minutes: a HOST:PORT (or ray://) that
    refuses connections is a usage error naming it before Ray is asked; other forms (auto)
    are Ray's to resolve, and an address that answers passes."""
    import socket

    from mnc_d2.inference.engines import RayAddressError, check_ray_address

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(RayAddressError, match=f"no Ray cluster answers at {address}"):
            check_ray_address(address)
    check_ray_address("auto")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        check_ray_address(f"127.0.0.1:{server.getsockname()[1]}")
    pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    started = time.time()
    assert predict_main(_args(trained, [str(scenes["good0"])], tmp_path / "o", "--engine",
                              "ray", "--ray-address", f"127.0.0.1:{port}")) == 2
    assert time.time() - started < 60
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in capsys.readouterr().err
    assert not (tmp_path / "o" / "manifest.parquet").exists()


def test_every_tile_is_seen_at_the_training_scale(tmp_path, trained, scenes, monkeypatch):
    """Every tile is resized by the factor of a whole training image (INPUT.TRAIN_TILE_SIZE,
    recorded by training: 650, SpaceNet 2's tile; the quick config's test size is 128): a scene
    smaller than a tile and any --tile-size are seen at the training scale, not each enlarged
    to the test size (Detectron2's evaluation resize took this 160 px scene to 128 px, 4 times
    the scale). A run that did not record it takes --tile-size for it. Test-time augmentation's
    rescaled passes keep the scale (a 256 px pass is 2 x the tile's input)."""
    from mnc_d2.inference.eager import EagerModel
    from mnc_d2.modeling.tta import MNCWithTTA

    assert "TRAIN_TILE_SIZE: 650" in (trained / "config.yaml").read_text()
    seen, passes = [], []
    resized, candidates = EagerModel._resized, MNCWithTTA._candidates

    def spy(self, image):
        out = resized(self, image)
        seen.append(out.shape[:2])
        return out

    def pass_spy(self, image):
        passes.append(tuple(image.shape[-2:]))
        return candidates(self, image)

    monkeypatch.setattr(EagerModel, "_resized", spy)
    monkeypatch.setattr(MNCWithTTA, "_candidates", pass_spy)
    scene = [str(scenes["good0"])]  # 160 x 160
    for extra, opts, expected in (
            ((), (), [(32, 32)]),                                     # 160 * 128 / 650
            (("--tile-size", "80", "--overlap", "0"), (), [(16, 16)] * 4),
            (("--tile-size", "80", "--overlap", "0"), ("INPUT.TRAIN_TILE_SIZE", "0"),
             [(128, 128)] * 4),                                       # not recorded: 80 px
            (("--tile-size", "320"), ("INPUT.TRAIN_TILE_SIZE", "0"), [(64, 64)])):
        seen.clear()
        out = tmp_path / f"o{len(list(tmp_path.iterdir()))}"
        args = _args(trained, scene, out, "--score-thresh", "0.0", *extra)
        assert predict_main(args + list(opts)) == 0
        assert seen == expected, (extra, opts)
    args = _args(trained, scene, tmp_path / "tta", "--score-thresh", "0.0")
    assert predict_main(args + ["TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(256,)",
                                "TEST.AUG.FLIP", "False"]) == 0
    assert passes == [(64, 64)]


def test_unloadable_weights_are_a_usage_error(tmp_path, trained, scenes):
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"not a checkpoint")
    args = _args(trained, [str(scenes["good0"])], tmp_path / "out")
    args[-1] = str(bad)
    assert predict_main(args) == 2


def test_weights_of_another_model_are_refused_by_prediction_and_export(tmp_path, trained,
                                                                        scenes, capsys):
    # Detectron2 loads what matches and only logs the rest: a model with random heads predicted
    # buildings from another architecture's file (e.g. a Mask R-CNN run's with MNC's config)
    from mnc_d2.export.cli import main as export_main

    state = torch.load(trained / "model_final.pth", weights_only=False)["model"]
    heads_gone = tmp_path / "heads_gone.pth"
    torch.save({"model": {k: v for k, v in state.items() if not k.startswith("roi_heads.")}},
               heads_gone)
    key = next(k for k in state if k.startswith("roi_heads.") and k.endswith(".weight"))
    reshaped = tmp_path / "reshaped.pth"
    torch.save({"model": {**state, key: state[key][:1]}}, reshaped)
    for weights, words in ((heads_gone, "of the model's parameters are not in it"),
                           (reshaped, f"1 have other shapes (e.g. {key})")):
        args = _args(trained, [str(scenes["good0"])], tmp_path / weights.stem)
        args[-1] = str(weights)
        assert predict_main(args) == 2
        err = capsys.readouterr().err
        assert f"MODEL.WEIGHTS {weights} does not fit the model of this config" in err, err
        assert words in err and "use the config.yaml of the run that trained" in err
        # the Ray engine checks them in the driver, before any actor (which would die with the
        # reason in its own log only)
        assert predict_main(args[:-2] + ["--engine", "ray", "--workers", "1", *args[-2:]]) == 2
        assert words in capsys.readouterr().err
        assert export_main(["--config-file", str(trained / "config.yaml"), "--output",
                            str(tmp_path / f"x_{weights.stem}"), "--formats", "torchscript",
                            "MODEL.WEIGHTS", str(weights)]) == 2
        assert words in capsys.readouterr().err
        assert not (tmp_path / f"x_{weights.stem}").exists()


# --- remote inputs: COGs over HTTP, STAC, VRT mosaics, other pixel sizes -----------------------

def _cog(src_path: Path, dest: Path, band_order=(1, 2, 3), descriptions=None, tags=None):
    """A COG copy of ``src_path`` with its bands in ``band_order``."""
    with rasterio.open(src_path) as src:
        profile = dict(src.profile, driver="GTiff")
        data = src.read(list(band_order))
    tmp = dest.with_suffix(".plain.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        for k, name in enumerate(descriptions or [], start=1):
            dst.set_band_description(k, name)
        if tags:
            dst.update_tags(**tags)
    rasterio.shutil.copy(tmp, dest, driver="COG", BLOCKSIZE="256", COMPRESS="DEFLATE")
    tmp.unlink()
    return dest


def test_a_small_window_of_a_remote_cog_fetches_a_fraction_of_it(served):
    from mnc_d2.data.bands import read_bands
    from mnc_d2.inference.engines import remote_env

    big = served.root / "big.tif"
    rng = np.random.default_rng(0)
    with rasterio.open(big.with_suffix(".plain.tif"), "w", driver="GTiff", height=4096,
                       width=4096, count=3, dtype="uint16", crs="EPSG:32611",
                       transform=rasterio.transform.from_origin(500000, 4000000, 0.3, 0.3),
                       tiled=True) as dst:
        dst.write(rng.integers(0, 2000, (3, 4096, 4096), dtype=np.uint16))
    rasterio.shutil.copy(big.with_suffix(".plain.tif"), big, driver="COG", BLOCKSIZE="256",
                         COMPRESS="DEFLATE")
    with remote_env(), rasterio.open(f"{served.url}/big.tif?token=SECRET") as src:
        window = rasterio.windows.Window(1000, 1000, 300, 300)
        image = read_bands(src, [1, 2, 3], None, window)
    with rasterio.open(big) as local:
        assert np.array_equal(image, read_bands(local, [1, 2, 3], None, window))
    fraction = served.sent["big.tif"] / big.stat().st_size
    assert fraction < 0.05, f"{fraction:.1%} of the COG fetched for a 300 x 300 window"


def test_stac_item_collection_of_remote_cogs_gives_the_local_buildings(
        tmp_path, served, trained, scenes, caplog):
    """Two remote COGs found through a saved STAC search, bands stored in another order than the
    model's and named in eo:bands; a token in the URLs. The buildings equal those of the local
    files, each row carries its imagery date, and the token appears nowhere."""
    names = ["red", "green", "blue"]
    items = []
    for k, order in enumerate([(3, 2, 1), (2, 1, 3)]):
        file = f"cog{k}.tif"
        _cog(scenes[f"good{k}"], served.root / file, order)
        bands = [{"name": f"b{i}", "common_name": names[i - 1]} for i in order]
        items.append({
            "type": "Feature", "stac_version": "1.0.0", "id": f"scene-{k}",
            "geometry": None, "bbox": None,
            "properties": {"datetime": f"2019-0{k + 1}-15T10:30:00Z", "view:off_nadir": 20.0 + k,
                           "gsd": 0.3},
            "links": [],
            "assets": {"visual": {"href": f"{served.url}/{file}?token=SECRET",
                                  "type": "image/tiff; application=geotiff; "
                                          "profile=cloud-optimized",
                                  "roles": ["data"], "eo:bands": bands},
                       "thumbnail": {"href": f"{served.url}/thumb.png", "type": "image/png",
                                     "roles": ["thumbnail"]}}})
    search = tmp_path / "search.json"
    search.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    named = ["INPUT.BAND_NAMES", "['red','green','blue']"]

    remote, local = tmp_path / "remote", tmp_path / "local"
    assert predict_main(_args(trained, [str(search)], remote, "--score-thresh", "0.0")
                        + named) == 0
    assert predict_main(_args(trained, [str(scenes["good0"]), str(scenes["good1"])], local,
                              "--score-thresh", "0.0") + named) == 0
    total = 0
    for k in range(2):
        a = gpd.read_parquet(remote / "buildings" / f"scene-{k}.parquet")
        b = gpd.read_parquet(local / "buildings" / f"good{k}.parquet")
        assert len(a) == len(b) and np.allclose(a.score, b.score)
        assert all(x.equals_exact(y, 1e-9) for x, y in zip(a.geometry, b.geometry))
        assert (a.datetime == pd.Timestamp(f"2019-0{k + 1}-15T10:30:00Z")).all()
        assert (a.view_angle == 20.0 + k).all() and b.datetime.isna().all()
        total += len(a)
    assert total > 0
    manifest = pd.read_parquet(remote / "manifest.parquet")
    assert manifest.status.tolist() == ["ok", "ok"] and (manifest.scene_gsd_m == 0.3).all()
    assert manifest.path.str.startswith(served.url).all()
    assert served.queries.count("token=SECRET") >= 2  # the token did reach the server
    # Scoring the run needs each scene's grid, which the folder records: the manifest keeps
    # no token, and the scenes need not be reachable any more (here: the server refuses them)
    from mnc_d2.evaluation.folder_scoring import score_folder

    truth = tmp_path / "truth.parquet"
    pd.concat([gpd.read_parquet(local / "buildings" / f"good{k}.parquet") for k in range(2)]
              )[["geometry"]].to_parquet(truth)
    from mnc_d2.viewer.site import build_site

    served.failing.update({"cog0.tif", "cog1.tif"})
    try:
        counts = [score_folder(folder, [str(truth)])[0].overall for folder in (remote, local)]
        # the map outlines each scene from its recorded grid, without its imagery
        unseen = build_site(remote, tmp_path / "site_remote")["scenes"]
    finally:
        served.failing.clear()
    assert [(c.tp, c.fp, c.fn) for c in counts] == [(counts[1].tp, 0, 0)] * 2
    seen = build_site(local, tmp_path / "site_local")["scenes"]
    assert [s["image"] for s in unseen] == [None, None] and all(s["image"] for s in seen)
    assert np.allclose([s["corners"] for s in unseen], [s["corners"] for s in seen], atol=1e-9)

    # The Ray engine, given the same STAC input, writes the same rows (provenance included).
    ray = pytest.importorskip("ray")
    on_ray = tmp_path / "on_ray"
    threads = torch.get_num_threads()
    try:
        code = predict_main(_args(trained, [str(search)], on_ray, "--score-thresh", "0.0",
                                  "--engine", "ray", "--workers", "1", "--torch-threads",
                                  str(threads)) + named)
    finally:
        ray.shutdown()
        torch.set_num_threads(threads)
    assert code == 0
    for k in range(2):
        a = gpd.read_parquet(remote / "buildings" / f"scene-{k}.parquet")
        b = gpd.read_parquet(on_ray / "buildings" / f"scene-{k}.parquet")
        pd.testing.assert_frame_equal(a.drop(columns="geometry"), b.drop(columns="geometry"),
                                      check_exact=False, rtol=1e-5)
    written = [p.read_bytes() for p in [*remote.rglob("*"), *on_ray.rglob("*")] if p.is_file()]
    assert not any(b"SECRET" in data for data in written)
    assert "SECRET" not in caplog.text

    # A server error on one scene: a failed row naming the URL (not the token), the other
    # scene done; the same command after the server recovers does the failed scene only.
    # (Copies under new names: GDAL caches what this process already read of cog0/cog1.)
    for k in range(2):
        (served.root / f"copy{k}.tif").write_bytes((served.root / f"cog{k}.tif").read_bytes())
        items[k]["assets"]["visual"]["href"] = f"{served.url}/copy{k}.tif?token=SECRET"
    search.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    retry = tmp_path / "retry"
    served.failing.add("copy1.tif")
    assert predict_main(_args(trained, [str(search)], retry, "--score-thresh", "0.0")
                        + named) == 1
    first = pd.read_parquet(retry / "manifest.parquet").set_index("scene")
    assert first.loc["scene-0", "status"] == "ok" and first.loc["scene-1", "status"] == "failed"
    assert f"{served.url}/copy1.tif?***" in first.loc["scene-1", "error"]
    assert "after 3 tries" in first.loc["scene-1", "error"]
    assert "SECRET" not in first.loc["scene-1", "error"] + caplog.text
    served.failing.clear()
    assert predict_main(_args(trained, [str(search)], retry, "--score-thresh", "0.0")
                        + named) == 0
    second = pd.read_parquet(retry / "manifest.parquet").iloc[2:].set_index("scene")
    assert second.status.to_dict() == {"scene-0": "skipped", "scene-1": "ok"}
    # A band the scene does not have: one clear error naming it and the file.
    missing = predict_main(_args(trained, [str(search)], tmp_path / "nir", "--score-thresh",
                                 "0.0", "INPUT.BAND_NAMES", "['red','green','nir']"))
    assert missing == 1
    errors = pd.read_parquet(tmp_path / "nir" / "manifest.parquet").error
    assert errors.str.contains("has no band named 'nir'").all()


def test_static_stac_catalog_on_disk_and_over_http(tmp_path, served, trained, scenes):
    import shutil

    catalog = served.root / "catalog"
    (catalog / "items" / "a").mkdir(parents=True)
    shutil.copy(scenes["good0"], catalog / "items" / "a" / "a.tif")
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "a", "geometry": None,
            "bbox": None, "properties": {"datetime": "2020-03-04T05:06:07Z"},
            "links": [{"rel": "root", "href": "../../catalog.json"},
                      {"rel": "parent", "href": "../../catalog.json"}],
            "assets": {"image": {"href": "./a.tif", "type": "image/tiff"}}}
    (catalog / "items" / "a" / "a.json").write_text(json.dumps(item))
    (catalog / "catalog.json").write_text(json.dumps({
        "type": "Catalog", "stac_version": "1.0.0", "id": "city", "description": "test",
        "links": [{"rel": "root", "href": "./catalog.json"},
                  {"rel": "item", "href": "./items/a/a.json"}]}))
    for source, out in ((str(catalog / "catalog.json"), tmp_path / "disk"),
                        (f"{served.url}/catalog/catalog.json", tmp_path / "http")):
        assert predict_main(_args(trained, [source], out, "--score-thresh", "0.0")) == 0
        frame = gpd.read_parquet(out / "buildings" / "a.parquet")
        assert (frame.datetime == pd.Timestamp("2020-03-04T05:06:07Z")).all()
    assert served.sent.get("catalog/items/a/a.tif", 0) > 0  # the http run read it remotely
    assert predict_main(_args(trained, [str(catalog / "catalog.json")], tmp_path / "x",
                              "--stac-asset", "nope")) == 2  # unknown asset: usage error


def _coarser_copy(scene: Path, dest: Path, px: int) -> Path:
    """``scene`` (160 x 160 px) resampled to ``px`` x ``px`` over the same ground: coarser
    pixels, the same place."""
    with rasterio.open(scene) as src:
        data, profile = src.read(out_shape=(src.count, px, px)), src.profile
        profile.update(height=px, width=px,
                       transform=src.transform @ rasterio.Affine.scale(src.width / px))
    with rasterio.open(dest, "w", **profile) as dst:
        dst.write(data)
    return dest


def test_vrt_mosaic_gaps_and_other_pixel_sizes(tmp_path, trained, scenes):
    """A VRT of four tiles with one missing: no building lies mostly in the gap (without the
    nodata rule about ten do). A scene stored at 0.5 m given to a model recorded at 0.3 m is
    resampled to 0.3 m before prediction."""
    with rasterio.open(scenes["good0"]) as src:
        data, transform, crs = src.read(), src.transform, src.crs
    half = 80
    sources = []
    for k, (r, c) in enumerate([(0, 0), (0, 1), (1, 0)]):  # (1, 1) missing
        path = tmp_path / f"q{k}.tif"
        with rasterio.open(path, "w", driver="GTiff", height=half, width=half, count=3,
                           dtype="uint16", crs=crs,
                           transform=transform @ rasterio.Affine.translation(c * half,
                                                                             r * half)) as d:
            d.write(data[:, r * half:(r + 1) * half, c * half:(c + 1) * half])
        sources.append((path, r, c))
    bands = "".join(
        f'<VRTRasterBand dataType="UInt16" band="{b}"><NoDataValue>0</NoDataValue>' + "".join(
            f"<SimpleSource><SourceFilename relativeToVRT=\"1\">{p.name}</SourceFilename>"
            f"<SourceBand>{b}</SourceBand><SrcRect xOff=\"0\" yOff=\"0\" xSize=\"{half}\" "
            f"ySize=\"{half}\"/><DstRect xOff=\"{c * half}\" yOff=\"{r * half}\" "
            f"xSize=\"{half}\" ySize=\"{half}\"/></SimpleSource>" for p, r, c in sources)
        + "</VRTRasterBand>" for b in (1, 2, 3))
    vrt = tmp_path / "mosaic.vrt"
    vrt.write_text(f'<VRTDataset rasterXSize="160" rasterYSize="160"><SRS>{crs.to_wkt()}</SRS>'
                   f"<GeoTransform>{', '.join(map(str, transform.to_gdal()))}</GeoTransform>"
                   f"{bands}</VRTDataset>")
    out = tmp_path / "vrt"
    assert predict_main(_args(trained, [str(vrt)], out, "--score-thresh", "0.0")) == 0
    frame = gpd.read_parquet(out / "buildings" / "mosaic.parquet")
    assert len(frame) > 0
    gap = shapely.box(*(transform @ (half, 2 * half)), *(transform @ (2 * half, half)))
    share = shapely.area(shapely.intersection(frame.geometry.values, gap)) / frame.area
    assert share.max() <= 0.5 + 1e-9  # in degrees as in pixels: at most half of any in the gap

    # the same scene at 0.5 m pixels (96 x 96) and a model that records 0.3 m
    coarse = _coarser_copy(scenes["good0"], tmp_path / "coarse.tif", 96)
    out = tmp_path / "gsd"
    assert predict_main(_args(trained, [str(coarse)], out, "--score-thresh", "0.0",
                              "--formats", "parquet,csv", "INPUT.GSD", "0.3")) == 0
    row = pd.read_parquet(out / "manifest.parquet").iloc[0]
    assert row.model_gsd_m == 0.3 and abs(row.scene_gsd_m - 0.5) < 0.01
    assert json.loads((out / "run.json").read_text())["model_gsd_m"] == 0.3
    # the SpaceNet CSV is in the 96 x 96 file's own pixels (truth CSVs of that file are), not
    # the 160 x 160 grid the model saw: through the file's transform it gives the GeoParquet's
    # buildings
    from mnc_d2.geometry.polygons import pixel_to_map

    frame = gpd.read_parquet(out / "buildings" / "coarse.parquet")
    rows = pd.read_csv(out / "csv" / "coarse.csv")
    assert len(rows) == len(frame) > 0
    pixels = shapely.from_wkt(rows.PolygonWKT_Pix.to_numpy())
    assert shapely.bounds(pixels)[:, 2:].max() <= 96 + 1e-6
    with rasterio.open(coarse) as src:
        placed = [pixel_to_map(g, src.transform) for g in pixels]
    iou = [shapely.area(shapely.intersection(a, b)) / shapely.area(shapely.union(a, b))
           for a, b in zip(placed, frame.geometry.to_crs(src.crs))]
    assert min(iou) > 0.98, min(iou)  # the CSV's pixels are rounded to 0.01

    # at 2 m pixels (24 x 24) the scene is 6.7x coarser than the model's 0.3 m: more than
    # --max-upsample's default allows, so it fails at once, naming the file, the sizes and the
    # option; the 0.5 m scene beside it is predicted all the same
    coarser = _coarser_copy(scenes["good0"], tmp_path / "coarser.tif", 24)
    out = tmp_path / "too_coarse"
    assert predict_main(_args(trained, [str(coarser), str(coarse)], out, "--score-thresh",
                              "0.0", "INPUT.GSD", "0.3")) == 1
    rows = pd.read_parquet(out / "manifest.parquet").set_index("scene")
    assert rows.status.to_dict() == {"coarser": "failed", "coarse": "ok"}
    error = rows.error["coarser"]
    assert "coarser.tif" in error and "6.7x the model's 0.3 m" in error, error
    assert "160 x 160 px" in error and "--max-upsample 7" in error, error
    assert not (out / "buildings" / "coarser.parquet").exists()
    # allowed by the option, it is resampled to 160 x 160 px and predicted
    out = tmp_path / "allowed"
    assert predict_main(_args(trained, [str(coarser)], out, "--score-thresh", "0.0",
                              "--max-upsample", "7", "INPUT.GSD", "0.3")) == 0
    row = pd.read_parquet(out / "manifest.parquet").iloc[0]
    assert row.status == "ok" and abs(row.scene_gsd_m - 2.0) < 0.01


def test_tiles_without_data_are_not_run_and_change_nothing(tmp_path, trained, scenes,
                                                          monkeypatch, caplog):
    """A scene whose right part is a nodata collar: the tiles wholly in it are not run, and
    every building away from them is the one of running every tile, bit for bit (one tile per
    batch: a batch without the blank tile is another computation in float). Near them the
    result may differ: a detection in a blank tile (this barely trained model finds some on
    band means) used to be merged into a building of the next tile that it touched at the
    tile edge, a piece the imagery does not show."""
    from mnc_d2.inference.predictor import ScenePredictor

    with rasterio.open(scenes["good0"]) as src:
        data, profile = src.read(), src.profile
    data[:, :, 90:] = 0
    profile.update(nodata=0)
    path = tmp_path / "collar.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    run_tiles = []
    original = ScenePredictor._run

    def counted(self, images):
        run_tiles.append(len(images))
        return original(self, images)

    monkeypatch.setattr(ScenePredictor, "_run", counted)
    extra = ("--score-thresh", "0.0", "--tile-size", "64", "--overlap", "16", "--batch-size",
             "1")
    with caplog.at_level("INFO", logger="mnc_d2.inference.predictor"):
        assert predict_main(_args(trained, [str(path)], tmp_path / "skip", *extra)) == 0
    # tile windows start at 0, 48, 96 (64 px, 16 overlap): the column at 96 is all collar
    assert sum(run_tiles) == 6, run_tiles
    assert "collar.tif: 3 of 9 tiles hold no data" in caplog.text
    run_tiles.clear()
    monkeypatch.setattr(ScenePredictor, "_run_where_data",
                        lambda self, read: self._run([image for image, _ in read]))
    assert predict_main(_args(trained, [str(path)], tmp_path / "all", *extra)) == 0
    assert sum(run_tiles) == 9
    a = gpd.read_parquet(tmp_path / "skip" / "buildings" / "collar.parquet")
    b = gpd.read_parquet(tmp_path / "all" / "buildings" / "collar.parquet")
    with rasterio.open(path) as src:
        blank_west = (src.transform @ (96, 0))[0]  # the blank tiles' windows start at column 96
    a, b = a[a.bounds.maxx < blank_west], b[b.bounds.maxx < blank_west]
    assert len(a) == len(b) > 0
    # the file records where the scene holds data (merge_footprints' seams): columns 0-89
    import pyarrow.parquet as pq
    from shapely.geometry import box

    from mnc_d2.geometry.polygons import pixel_to_map
    from mnc_d2.inference.scenes import recorded_data_region

    region = recorded_data_region(pq.read_schema(
        tmp_path / "skip" / "buildings" / "collar.parquet").metadata)
    with rasterio.open(path) as src:
        expected = pixel_to_map(box(0, 0, 90, src.height), src.transform)
    assert region is not None and region.symmetric_difference(expected).area < \
        1e-6 * expected.area
    assert (a.score.to_numpy() == b.score.to_numpy()).all()
    assert all(x.equals_exact(y, 0.0) for x, y in zip(a.geometry, b.geometry))


def test_an_8_bit_export_and_unnamed_extra_bands_are_warned_about(tmp_path, trained, scenes,
                                                                   monkeypatch):
    """The same scene stretched to 0-255 (an 8-bit export) still predicts, with a warning that
    it is far darker than the training DNs; the original scene gets none."""
    import mnc_d2.inference.predictor as predictor

    warned = []
    monkeypatch.setattr(predictor.logger, "warning",
                        lambda msg, *args: warned.append(msg % args if args else msg))
    with rasterio.open(scenes["good0"]) as src:
        data, profile = src.read(), src.profile
    profile.update(dtype="uint8")
    eight = tmp_path / "eight_bit.tif"
    with rasterio.open(eight, "w", **profile) as dst:
        dst.write((data / (data.max() / 255.0)).astype("uint8"))
    # four unnamed bands for a model that learned red, green, blue: read by index, with a
    # warning (an 8-band MUL-PanSharpen file given to an RGB model reads coastal, blue, green)
    profile.update(dtype="uint16", count=4)
    four = tmp_path / "four_bands.tif"
    with rasterio.open(four, "w", **profile) as dst:
        dst.write(np.concatenate([data, data[:1]]))
    # the same four bands tagged red, green, blue, undefined (as NAIP's R, G, B, NIR): no warning
    from rasterio.enums import ColorInterp

    tagged = tmp_path / "tagged.tif"
    with rasterio.open(tagged, "w", **profile) as dst:
        dst.write(np.concatenate([data, data[:1]]))
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue,
                           ColorInterp.undefined]
    # and four bands named in the file: read by name, no warning
    named = tmp_path / "named.tif"
    with rasterio.open(named, "w", **profile) as dst:
        dst.write(np.concatenate([data, data[:1]]))
        dst.descriptions = ("red", "green", "blue", "nir")
    out = tmp_path / "out"
    assert predict_main(_args(trained, [str(scenes["good0"]), str(eight), str(four),
                                        str(tagged), str(named)], out)) == 0
    assert len(warned) == 2, warned
    assert warned[0].startswith(f"{eight}: its bands' typical values") and \
        "darker than the imagery the model was trained on" in warned[0] and \
        "8-bit data" in warned[0], warned[0]
    assert warned[1].startswith(f"{four} has 4 bands and names none the model knows: it reads "
                                "bands [1, 2, 3] by index"), warned[1]
    # both kept in the scenes' manifest rows (what a Ray run's driver sees of them)
    rows = pd.read_parquet(out / "manifest.parquet").set_index("scene").warnings.to_dict()
    assert rows == {"good0": "", "eight_bit": warned[0], "four_bands": warned[1], "tagged": "",
                    "named": ""}


def test_scene_bands_read_the_model_inputs_from_other_band_numbers(tmp_path, trained, scenes,
                                                                   capsys):
    """An RGB model on an 8-band file whose red, green, blue are bands 5, 3, 2 (WorldView-3's
    order, SpaceNet's MUL-PanSharpen): --scene-bands 5 3 2 gives the buildings of the RGB file
    (INPUT.BANDS keeps naming the training bands, whose statistics the run holds); without it
    the file is read by index with a warning that names the option. The run's identity
    records the option, the viewer draws those bands, and bad values are usage errors."""
    from mnc_d2.viewer.site import _bands

    with rasterio.open(scenes["good0"]) as src:
        rgb, profile = src.read(), src.profile
    eight = np.zeros((8, *rgb.shape[1:]), dtype=rgb.dtype)
    eight[[4, 2, 1]] = rgb
    eight[[0, 3, 5, 6, 7]] = rgb[:1] // 3 + 200  # other bands: unlike any of the three
    profile.update(count=8)
    mul = tmp_path / "mul.tif"
    with rasterio.open(mul, "w", **profile) as dst:
        dst.write(eight)
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert predict_main(_args(trained, [str(scenes["good0"])], ref, "--score-thresh",
                              "0.0")) == 0
    # the option last before the overrides: they are split off it as off --input
    assert predict_main(_args(trained, [str(mul)], out, "--score-thresh", "0.0",
                              "--scene-bands", "5", "3", "2")) == 0
    a = gpd.read_parquet(ref / "buildings" / "good0.parquet")
    b = gpd.read_parquet(out / "buildings" / "mul.parquet")
    assert len(a) > 0 and len(a) == len(b)
    assert np.allclose(a.score, b.score, atol=1e-6)
    assert all(x.equals_exact(y, 1e-9) for x, y in zip(a.geometry, b.geometry))
    run = json.loads((out / "run.json").read_text())
    assert run["scene_bands"] == [5, 3, 2] and _bands(run) == [5, 3, 2]
    assert pd.read_parquet(out / "manifest.parquet").warnings.tolist() == [""]
    capsys.readouterr()
    # the same folder without the option is another run
    assert predict_main(_args(trained, [str(mul)], out, "--score-thresh", "0.0")) == 2
    assert "scene_bands differ" in capsys.readouterr().err
    # without it: bands 1, 2, 3 by index, the warning naming the option
    assert predict_main(_args(trained, [str(mul)], tmp_path / "plain", "--score-thresh",
                              "0.0")) == 0
    warning = pd.read_parquet(tmp_path / "plain" / "manifest.parquet").warnings.iloc[0]
    assert "reads bands [1, 2, 3] by index" in warning and "--scene-bands" in warning
    # bad values: usage errors before any scene; a file with too few bands fails alone
    assert predict_main(_args(trained, [str(mul)], tmp_path / "e1", "--scene-bands", "5",
                              "3")) == 2
    assert "--scene-bands 5 3: the model reads 3 band(s)" in capsys.readouterr().err
    assert predict_main(_args(trained, [str(mul)], tmp_path / "e2", "--scene-bands", "5", "x",
                              "2")) == 2
    assert "give 1-based band numbers" in capsys.readouterr().err
    assert predict_main(_args(trained, [str(mul), str(scenes["good1"])], tmp_path / "e3",
                              "--scene-bands", "5", "3", "2")) == 1
    rows = pd.read_parquet(tmp_path / "e3" / "manifest.parquet").set_index("scene")
    assert rows.status.to_dict() == {"mul": "ok", "good1": "failed"}
    assert "--scene-bands 5 3 2: " in rows.error["good1"] and "has 3 band(s)" in \
        rows.error["good1"]
    # --rgb-bands only draws the overlay: a file without those bands is still predicted, its
    # overlay showing its first three
    assert predict_main(_args(trained, [str(mul), str(scenes["good1"])], tmp_path / "png",
                              "--formats", "parquet,png", "--rgb-bands", "5", "3", "2")) == 0
    assert sorted(p.name for p in (tmp_path / "png" / "png").iterdir()) == ["good1.png",
                                                                           "mul.png"]
    # the early check of each scene reads the bands given, not INPUT.BANDS: a 2-band file
    # whose band 2 the user gives twice has no band 3 (the model's), and is predicted
    two = tmp_path / "two.tif"
    profile.update(count=2)
    with rasterio.open(two, "w", **profile) as dst:
        dst.write(rgb[:2])
    assert predict_main(_args(trained, [str(two)], tmp_path / "e4", "--scene-bands", "1", "2",
                              "2")) == 0
    # a one-band (panchromatic) file for an RGB model: its failed row names the option, and
    # with it (the band given to each channel) the file is predicted
    pan = tmp_path / "pan.tif"
    profile.update(count=1)
    with rasterio.open(pan, "w", **profile) as dst:
        dst.write(rgb[:1])
    assert predict_main(_args(trained, [str(pan)], tmp_path / "e5")) == 1
    error = pd.read_parquet(tmp_path / "e5" / "manifest.parquet").error.iloc[0]
    assert "has 1 band(s)" in error and "--scene-bands 1 1 1" in error
    assert predict_main(_args(trained, [str(pan)], tmp_path / "e6", "--scene-bands", "1", "1",
                              "1")) == 0


def test_a_stac_asset_is_chosen_by_the_bands_read():
    """An item with a 3-band visual and an 8-band analytic asset: the model's band count picks
    the visual; with --scene-bands 5 3 2 (min_bands 5) the only asset having band 5; an item
    where several fit stays an error naming --stac-asset."""
    from mnc_d2.inference.sources import choose_asset

    def asset(n):
        return {"href": "x.tif", "type": "image/tiff; application=geotiff", "roles": ["data"],
                "eo:bands": [{"name": f"b{i}"} for i in range(n)]}

    assets = {"visual": asset(3), "analytic": asset(8)}
    assert choose_asset("i", assets, None, 3, "s.json") == "visual"
    assert choose_asset("i", assets, None, None, "s.json", min_bands=5) == "analytic"
    with pytest.raises(ValueError, match="2 GeoTIFF data assets .*--stac-asset KEY"):
        choose_asset("i", assets, None, None, "s.json", min_bands=3)
    assert choose_asset("i", assets, "visual", None, "s.json", min_bands=5) == "visual"


def test_scene_gsd_and_areas_in_metres_whatever_the_crs(tmp_path):
    """Ground metres per pixel, the number scenes are resampled by: UTM as stated, US survey
    feet converted, Web Mercator's stated size shrunk by the cosine of the latitude, degrees
    measured on the ellipsoid, unknown without a CRS."""
    import math
    import warnings

    from pyproj import Transformer
    from rasterio.transform import from_origin

    from mnc_d2.inference.predictor import scene_gsd_m

    def gsd(crs, transform):
        path = tmp_path / "g.tif"
        with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=1,
                           dtype="uint8", crs=crs, transform=transform):
            pass
        with rasterio.open(path) as src:
            return scene_gsd_m(src)

    assert gsd("EPSG:32616", from_origin(740000, 3740000, 0.3, 0.3)) == pytest.approx(0.3)
    # a grid turned by 30 degrees: still 0.3 m pixels
    turned = from_origin(740000, 3740000, 0.3, 0.3) @ rasterio.Affine.rotation(30)
    assert gsd("EPSG:32616", turned) == pytest.approx(0.3)
    assert gsd("EPSG:4326", from_origin(-74, 40, 2.7e-6, 2.7e-6) @ rasterio.Affine.rotation(
        90)) == pytest.approx(0.265, rel=0.01)
    # New York State Plane, US survey feet: 1 ft pixels
    assert gsd("EPSG:2263", from_origin(980000, 200000, 1.0, 1.0)) == \
        pytest.approx(1200 / 3937)
    # a web-map export at 40 degrees north states 0.3 / cos(40 deg) = 0.392 m pixels
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(-74, 40)
    stated = 0.3 / math.cos(math.radians(40))
    assert gsd("EPSG:3857", from_origin(x, y, stated, stated)) == pytest.approx(0.3, rel=0.005)
    # 2.7e-6 degrees at 40 N: about 0.30 m north-south, 0.23 m east-west (mean 0.265)
    assert gsd("EPSG:4326", from_origin(-74, 40, 2.7e-6, 2.7e-6)) == pytest.approx(0.265,
                                                                                   rel=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        assert math.isnan(gsd(None, rasterio.Affine.identity()))

    # areas in m^2 likewise: a 10 m square drawn in Web Mercator at 40 degrees north (13.05
    # Mercator metres a side) has 100 m^2, not 170
    from mnc_d2.inference.scenes import area_m2

    side = 10 / math.cos(math.radians(40))
    frame = gpd.GeoDataFrame(geometry=[shapely.box(x, y, x + side, y + side)], crs="EPSG:3857")
    assert area_m2(frame) == pytest.approx([100.0], rel=0.01)


def test_bands_by_name_and_recorded_imagery(tmp_path, caplog):
    from mnc_d2.inference.predictor import bands_by_name

    run = ["red", "green", "blue"]
    assert bands_by_name(run, ["Blue", "GREEN", "red"], [1, 2, 3], "x.tif") == [3, 2, 1]
    assert bands_by_name(run, ["Band 1", "Band 2", "Band 3"], [1, 2, 3], "x.tif") == [1, 2, 3]
    assert bands_by_name(run, ["", "", ""], [1, 2, 3], "x.tif") == [1, 2, 3]  # unnamed
    assert bands_by_name([], ["blue", "green", "red"], [1, 2, 3], "x.tif") == [1, 2, 3]
    with pytest.raises(ValueError, match="x.tif has no band named 'blue'"):
        bands_by_name(run, ["red", "green", "nir"], [1, 2, 3], "x.tif")
    # A training run records its release product's band names and pixel size.
    from detectron2.data import MetadataCatalog

    from mnc_d2.config import add_mnc_config
    from mnc_d2.engine.setup import record_imagery
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_mnc_config(cfg)
    cfg.DATASETS.TRAIN = ("spacenet2_all_train_8band",)
    cfg.INPUT.BANDS = [5, 3, 2]
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = [0.0] * 3, [1.0] * 3
    record_imagery(cfg)
    assert cfg.INPUT.BAND_NAMES == ["red", "green", "blue"] and cfg.INPUT.GSD == 0.3
    assert MetadataCatalog.get("spacenet4_atlanta_all_train").band_names == [
        "blue", "green", "red", "nir"]
    # training on releases of different pixel sizes (0.3 m and SpaceNet 4's 0.5 m) warns: the
    # run records the first's, to which prediction resamples every scene
    cfg.DATASETS.TRAIN = ("spacenet2_all_train", "spacenet4_atlanta_all_train")
    cfg.INPUT.BANDS, cfg.INPUT.GSD = [], 0.0
    with caplog.at_level("WARNING", logger="mnc_d2.data.geo_dataset"):
        record_imagery(cfg)
    assert cfg.INPUT.GSD == 0.3 and "DATASETS.TRAIN's datasets differ in pixel size" in (
        caplog.text) and "0.5 m (spacenet4_atlanta_all_train)" in caplog.text, caplog.text


def test_s3_urls_through_gdal_against_a_local_endpoint(tmp_path, served, trained, scenes,
                                                        monkeypatch):
    """s3:// inputs go to GDAL's /vsis3/; here an S3-style endpoint on 127.0.0.1 serves the
    bucket (path-style addressing, unsigned requests), as an S3-compatible store would."""
    (served.root / "bucket").mkdir()
    _cog(scenes["good0"], served.root / "bucket" / "scene.tif")
    host = served.url.removeprefix("http://")
    for key, value in {"AWS_S3_ENDPOINT": host, "AWS_HTTPS": "NO",
                       "AWS_VIRTUAL_HOSTING": "FALSE", "AWS_NO_SIGN_REQUEST": "YES"}.items():
        monkeypatch.setenv(key, value)
    out, local = tmp_path / "s3", tmp_path / "local"
    assert predict_main(_args(trained, ["s3://bucket/scene.tif"], out, "--score-thresh",
                              "0.0")) == 0
    assert predict_main(_args(trained, [str(scenes["good0"])], local, "--score-thresh",
                              "0.0")) == 0
    a = gpd.read_parquet(out / "buildings" / "scene.parquet")
    b = gpd.read_parquet(local / "buildings" / "good0.parquet")
    assert len(a) == len(b) > 0 and np.allclose(a.score, b.score)
    assert served.sent.get("bucket/scene.tif", 0) > 0
    assert pd.read_parquet(out / "manifest.parquet").path.tolist() == ["s3://bucket/scene.tif"]


def test_a_remote_scene_that_times_out_fails_alone(tmp_path, served, trained, scenes,
                                                   monkeypatch):
    _cog(scenes["good0"], served.root / "slow.tif")
    _cog(scenes["good1"], served.root / "fast.tif")
    served.hanging.add("slow.tif")
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "1")
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    out = tmp_path / "out"
    code = predict_main(_args(trained, [f"{served.url}/slow.tif?sig=SECRET",
                                        f"{served.url}/fast.tif"], out, "--score-thresh", "0.0"))
    assert code == 1
    rows = pd.read_parquet(out / "manifest.parquet").set_index("scene")
    assert rows.loc["fast", "status"] == "ok" and rows.loc["slow", "status"] == "failed"
    assert "after 3 tries" in rows.loc["slow", "error"] and "SECRET" not in rows.loc["slow",
                                                                                     "error"]


def test_match_radiometry_makes_a_rescaled_scene_predict_like_the_original(tmp_path, trained,
                                                                          scenes, capsys):
    """--match-radiometry maps each scene's bands linearly onto the training imagery's mean and
    spread, so a copy of a scene on another scale (here x * 0.12 + 3 per band, like an 8-bit
    export, kept in float to leave quantisation out) gives the original's buildings; without
    the option it does not (the radiometry warning says why). The option is part of the run's
    identity, and exported models do the same (their export.json records the spread)."""
    with rasterio.open(scenes["good0"]) as src:
        data, profile = src.read().astype(np.float64), src.profile
    profile.update(dtype="float32")
    dark = tmp_path / "dark.tif"
    with rasterio.open(dark, "w", **profile) as dst:
        dst.write((data * 0.12 + 3).astype(np.float32))
    runs = {}
    for name, path, extra in (("ref", scenes["good0"], ["--match-radiometry"]),
                              ("matched", dark, ["--match-radiometry"]),
                              ("plain", dark, [])):
        assert predict_main(_args(trained, [str(path)], tmp_path / name, "--score-thresh",
                                  "0.0", *extra)) == 0
        runs[name] = gpd.read_parquet(next((tmp_path / name / "buildings").iterdir()))
    a, b, c = runs["ref"], runs["matched"], runs["plain"]
    assert len(a) > 0 and len(a) == len(b)
    assert np.allclose(np.sort(a.score), np.sort(b.score), atol=1e-3)
    assert shapely.union_all(a.geometry).symmetric_difference(
        shapely.union_all(b.geometry)).area < 0.01 * shapely.union_all(a.geometry).area
    assert len(c) != len(a) or not np.allclose(np.sort(c.score), np.sort(a.score), atol=1e-2)
    assert "darker than the imagery the model was trained on" in pd.read_parquet(
        tmp_path / "plain" / "manifest.parquet").warnings.iloc[0]
    assert json.loads((tmp_path / "matched" / "run.json").read_text())["match_radiometry"]
    capsys.readouterr()
    assert predict_main(_args(trained, [str(dark)], tmp_path / "matched", "--score-thresh",
                              "0.0")) == 2
    assert "match_radiometry differ" in capsys.readouterr().err


def test_a_scene_without_data_says_so(tmp_path, trained, scenes):
    """A scene whose sampled pixels are all nodata (a wrong nodata value, or a mosaic's empty
    edge) ends ok with no building, and its row says why there was nothing to find."""
    with rasterio.open(scenes["good0"]) as src:
        data, profile = src.read(), src.profile
    profile.update(nodata=int(data.max()) + 1)
    empty = tmp_path / "empty.tif"
    with rasterio.open(empty, "w", **profile) as dst:
        dst.write(np.full_like(data, profile["nodata"]))
    assert predict_main(_args(trained, [str(empty)], tmp_path / "out")) == 0
    row = pd.read_parquet(tmp_path / "out" / "manifest.parquet").iloc[0]
    assert row.status == "ok" and row.buildings == 0
    assert "every sampled pixel is outside its data (nodata value" in row.warnings
    assert "gdal_edit.py -a_nodata" in row.warnings
