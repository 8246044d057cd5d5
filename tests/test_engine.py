"""train_net (single and 2-process CPU, two machines), --resume after a kill, predict.py, the demo."""

from __future__ import annotations

import json
import re
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
import torch

from mnc_d2.synthetic.spacenet2 import STYLES, generate_city, render_scene, tile_transform, to_dn

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "configs" / "quick_schedules" / "mnc_R_18_FPN_quick_synthetic.yaml"
FAST = ["INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128", "INPUT.BAND_STATS", "auto",
        "INPUT.BAND_STATS_MAX_IMAGES", "4"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("d2data")
    generate_city(root / "spacenet", "vegas", 17, seed=1, progress=False)  # val: img16, img17
    return root


def _env(data_root: Path) -> dict:
    return dict(os.environ, DETECTRON2_DATASETS=str(data_root), PYTHONUNBUFFERED="1")


def train_quick(data_root: Path, out: Path, iters: int, config: Path = QUICK,
                opts=()) -> Path:
    """A tiny CPU training run (the other test modules' trained model): ``out`` holds its
    config.yaml and model_final.pth. ``opts``: more KEY VALUE config overrides."""
    subprocess.run([sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file",
                    str(config), "OUTPUT_DIR", str(out), *FAST, "SOLVER.MAX_ITER", str(iters),
                    "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", *opts],
                   env=_env(data_root), check=True, capture_output=True, timeout=900)
    return out


def _train_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", str(QUICK),
            *[a for a in extra if a.startswith("--")], "OUTPUT_DIR", str(out), *FAST,
            *[a for a in extra if not a.startswith("--")]]


# --- training ---------------------------------------------------------------------------------


def test_missing_config_or_weights_file_is_named_before_anything_starts(tmp_path):
    typo = QUICK.with_name("mnc_R_18_FPN_quick_synthetik.yaml")
    run = subprocess.run([sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file",
                          str(typo), "OUTPUT_DIR", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert f"error: --config-file {typo}: no such file; did you mean {QUICK}" in run.stderr
    assert not (tmp_path / "o").exists()
    run = subprocess.run([sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file",
                          str(QUICK), "--eval-only", "MODEL.WEIGHTS", str(tmp_path / "no.pth"),
                          "OUTPUT_DIR", str(tmp_path / "o")], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert f"error: MODEL.WEIGHTS {tmp_path / 'no.pth'}: no such file" in run.stderr
    # overrides yacs stops on with a bare assertion: an option after them, a misspelt key
    for extra, said in (
            (["SOLVER.MAX_ITER", "1", "--num-gpus", "1"], "error: --num-gpus comes after the "
             "KEY VALUE overrides, where it is read as a config key: put options before"),
            (["SOLVER.MAX_ITERS", "1"], "error: SOLVER.MAX_ITERS (a KEY VALUE override) is not "
             "a config key; did you mean SOLVER.MAX_ITER")):
        run = subprocess.run([sys.executable, str(REPO / "tools" / "train_net.py"),
                              "--config-file", str(QUICK), "OUTPUT_DIR", str(tmp_path / "o"),
                              *extra], capture_output=True, text=True, timeout=300)
        assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
        assert said in run.stderr, run.stderr
        assert not (tmp_path / "o").exists()


def test_overrides_that_yacs_would_stop_on_are_named():
    """predict.py and export_model.py (through setup_cfg) get the same messages, as usage
    errors: an option after the overrides, a key without its value, a misspelt key."""
    from detectron2.config import get_cfg

    import mnc_d2
    from mnc_d2.engine.setup import check_overrides

    cfg = get_cfg()
    mnc_d2.add_mnc_config(cfg)
    check_overrides(cfg, ["MODEL.WEIGHTS", "x.pth", "TEST.SPACENET.SCORE_THRESH", "0.3"])
    for opts, said in ((["MODEL.WEIGHTS", "x.pth", "--formats", "geojson"],
                        "--formats comes after the KEY VALUE overrides"),
                       (["MODEL.WEIGHTS"], "come in pairs: MODEL.WEIGHTS has no value"),
                       (["MODEL.WEIGHT", "x.pth"], "did you mean MODEL.WEIGHTS?"),
                       (["TEST.SPACENET.SCORE_THRES", "0.3"],
                        "did you mean TEST.SPACENET.SCORE_THRESH"),
                       (["NOT_A_NODE.KEY", "1"], "NOT_A_NODE.KEY (a KEY VALUE override) is "
                        "not a config key")):
        with pytest.raises(ValueError, match=re.escape(said)):
            check_overrides(cfg, opts)


def test_train_net_on_spacenet4_four_bands_scored_by_nadir_segment(tmp_path):
    """Another release end to end: 4-band Pan-Sharpen SpaceNet 4 (built-in names, split by tile),
    band statistics, evaluation grouped by nadir segment, best checkpoint by that score."""
    from mnc_d2.synthetic.releases import generate

    generate("spacenet4", tmp_path / "data" / "spacenet", 7, seed=2)  # tile 7 is the val split
    out = tmp_path / "sn4"
    cmd = _train_cmd(out, "SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "2",
                     "MODEL.PIXEL_MEAN", "[400.0, 400.0, 400.0, 400.0]",
                     "MODEL.PIXEL_STD", "[200.0, 200.0, 200.0, 200.0]", "INPUT.BANDS", "[1, 2, 3, 4]",
                     "DATASETS.TRAIN", "('spacenet4_atlanta_all_train',)",
                     "DATASETS.TEST", "('spacenet4_atlanta_all_val',)")
    subprocess.run(cmd, env=_env(tmp_path / "data"), check=True, capture_output=True, timeout=600)
    stats = json.loads((out / "band_stats.json").read_text())
    assert len(stats["mean"]) == 4
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    scored = [m for m in metrics if "spacenet/score" in m]
    assert scored and all(f"spacenet/{g}/F1" in scored[-1]
                          for g in ("Nadir", "Off-Nadir", "Very-Off-Nadir"))
    assert scored[-1]["spacenet/mean_nadir_F1"] == scored[-1]["spacenet/score"]
    assert (out / "model_best.pth").exists()


def test_train_net_single_process_then_eval_only(tmp_path, data_root):
    out = tmp_path / "run"
    subprocess.run(_train_cmd(out, "SOLVER.MAX_ITER", "3", "TEST.EVAL_PERIOD", "3"),
                   env=_env(data_root), check=True, capture_output=True, timeout=600)
    assert (out / "model_final.pth").exists() and (out / "band_stats.json").exists()
    # mnc_d2's own lines reach the run's log beside Detectron2's (default_setup alone drops them).
    log = (out / "log.txt").read_text()
    assert "mnc_d2.data.band_stats INFO: band statistics from" in log
    assert "mnc_d2.evaluation.spacenet_evaluation INFO: SpaceNet (spacenet rules)" in log
    assert (out / "inference" / "spacenet2_vegas_val" / "spacenet_proposals.csv").exists()
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert any("spacenet/score" in m for m in metrics)
    # The best checkpoint follows the headline score (a key it cannot find saves nothing).
    assert (out / "model_best.pth").exists()
    assert json.loads((out / "score_threshold.json").read_text())["passes"] == "one pass"
    # the best checkpoint keeps the threshold its evaluation chose (later ones rewrite the run's)
    assert (out / "score_threshold_model_best.json").read_bytes() == (
        out / "score_threshold.json").read_bytes()
    # --eval-only with an override (here test-time augmentation) keeps the run's config.yaml,
    # which predict.py and the export read, and writes its own beside it; the threshold it
    # chooses records the passes it was chosen with
    trained = (out / "config.yaml").read_bytes()
    evaluated = subprocess.run(
        [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file",
         str(out / "config.yaml"), "--eval-only", "MODEL.WEIGHTS", str(out / "model_final.pth"),
         "TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "()"],
        env=_env(data_root), check=True, capture_output=True, text=True, timeout=600)
    assert "copypaste: Task: spacenet" in evaluated.stdout + evaluated.stderr
    assert (out / "config.yaml").read_bytes() == trained
    assert "ENABLED: true" in (out / "config_eval.yaml").read_text()
    assert json.loads((out / "score_threshold.json").read_text())["passes"] == (
        "TEST.AUG MIN_SIZES [] MAX_SIZE 4000 FLIP True ROT90 False")
    # another checkpoint of the run evaluated (comparing checkpoints): its threshold goes to its
    # own file, the run's stays, and prediction with that checkpoint reads its own
    run_threshold = (out / "score_threshold.json").read_bytes()
    shutil.copy(out / "model_final.pth", out / "model_0000001.pth")
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file",
         str(out / "config.yaml"), "--eval-only", "MODEL.WEIGHTS", str(out / "model_0000001.pth")],
        env=_env(data_root), check=True, capture_output=True, text=True, timeout=600)
    assert (out / "score_threshold.json").read_bytes() == run_threshold
    own = json.loads((out / "score_threshold_model_0000001.json").read_text())
    assert own["passes"] == "one pass"
    from mnc_d2.inference.threshold import threshold_file_for

    assert threshold_file_for(out / "model_0000001.pth") == (
        out / "score_threshold_model_0000001.json")
    assert threshold_file_for(out / "model_final.pth") == out / "score_threshold.json"
    assert threshold_file_for(out / "model_best.pth") == out / "score_threshold_model_best.json"
    assert threshold_file_for(out / "model_0000002.pth") == out / "score_threshold.json"


def _ddp_train_worker(config: str, out: str, opts: list[str]) -> None:
    from detectron2.utils import comm

    from mnc_d2.engine.setup import setup_cfg
    from mnc_d2.engine.trainer import Trainer

    cfg = setup_cfg(config, ["OUTPUT_DIR", out, *opts])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    checksum = float(sum(p.double().sum() for p in model.parameters()))
    sums = comm.all_gather(checksum)
    results = Trainer.test(cfg, model)
    Path(out, f"rank{comm.get_rank()}.json").write_text(
        json.dumps({"checksums": sums, "results": results, "world": comm.get_world_size()}))


def test_two_process_cpu_training_stays_in_sync_and_gathers(tmp_path, data_root, monkeypatch):
    from detectron2.data import DatasetCatalog

    from mnc_d2.engine import launch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: 2-process CPU training is the no-GPU path")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(data_root))
    opts = [*FAST, "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2",
            "TEST.SPACENET.SCORE_THRESH", "0.0"]
    launch(_ddp_train_worker, 2, dist_url="auto", args=(str(QUICK), str(tmp_path), opts))
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0["world"] == 2
    assert rank0["checksums"][0] == rank0["checksums"][1]  # DDP kept the replicas identical
    # Each rank evaluated half of the val images; the gathered result counts every building
    # (of at least 20 px) of both halves as TP or FN.
    sn = rank0["results"]["spacenet"]
    truth = sum(1 for d in DatasetCatalog.get("spacenet2_vegas_val") for a in d["annotations"]
                if shapely.from_wkt(a["wkt_pix"]).area >= 20)
    assert truth > 0 and sn["TP"] + sn["FN"] == truth
    assert rank1["results"] == {}


def test_two_machines_as_two_local_process_groups(tmp_path, data_root):
    """tools/train_net.py --num-machines 2 --machine-rank R --dist-url tcp://...: two "machines"
    (one process each, gloo on CPU) train together for a few iterations."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(_env(data_root), OMP_NUM_THREADS="1")
    procs = []
    for rank in (0, 1):
        cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", str(QUICK),
               "--num-gpus", "1", "--num-machines", "2", "--machine-rank", str(rank),
               "--dist-url", f"tcp://127.0.0.1:{port}", "OUTPUT_DIR", str(tmp_path / f"m{rank}"),
               *FAST, "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "TEST.EVAL_PERIOD", "0"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-1500:] + logs[1][-1500:]
    rank1_log = (tmp_path / "m1" / "log.txt.rank1").read_text()  # non-main ranks log to a file
    assert "Rank of current process: 1. World size: 2" in rank1_log
    assert "Rank of current process: 0. World size: 2" in logs[0]
    assert (tmp_path / "m0" / "model_final.pth").exists()  # the main process saves
    assert not (tmp_path / "m1" / "model_final.pth").exists()


def test_resume_after_kill_continues_at_the_checkpoint(tmp_path, data_root):
    out = tmp_path / "run"
    cmd = _train_cmd(out, "SOLVER.MAX_ITER", "400", "SOLVER.CHECKPOINT_PERIOD", "2")
    proc = subprocess.Popen(cmd, env=_env(data_root), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "model_0000003.pth").exists():
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "last_checkpoint").exists(), "no checkpoint before the kill"
    last = (out / "last_checkpoint").read_text().strip()
    iteration = int(last.split("_")[1].split(".")[0])
    resumed = subprocess.run(_train_cmd(out, "--resume", "SOLVER.MAX_ITER", str(iteration + 3)),
                             env=_env(data_root), capture_output=True, text=True, timeout=600)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-2000:]
    assert f"Starting training from iteration {iteration + 1}" in log


def test_the_best_score_survives_a_resume(tmp_path):
    """The best checkpoint's score and iteration go into the trainer's checkpoint state and come
    back on --resume (Detectron2's own hook starts again from none, so the first evaluation
    after a resume replaced model_best.pth whatever its score)."""
    from detectron2.engine.train_loop import TrainerBase

    from mnc_d2.engine.trainer import BestCheckpointerKeepingThreshold

    def trainer_with_hook():
        hook = BestCheckpointerKeepingThreshold(2, None, "spacenet/score", str(tmp_path))
        trainer = TrainerBase()
        trainer.register_hooks([hook])
        return trainer, hook

    before, hook = trainer_with_hook()
    assert "hooks" not in before.state_dict()  # nothing evaluated yet: nothing to keep
    hook.best_metric, hook.best_iter = 0.83, 5
    state = before.state_dict()
    after, restored = trainer_with_hook()
    after.load_state_dict(state)
    assert (restored.best_metric, restored.best_iter) == (0.83, 5)


def test_checkpoints_and_their_tag_are_written_whole(tmp_path, monkeypatch):
    """A save that dies half-way (here: torch.save raising after writing some bytes, as a kill
    would stop it) leaves the previous checkpoint tagged and no partial model file."""
    from mnc_d2.modeling.checkpoint import MultiBandCheckpointer

    model = torch.nn.Linear(2, 2)
    ckpt = MultiBandCheckpointer(model, str(tmp_path), input_bands=[1, 2, 3])
    ckpt.save("model_0000001", iteration=1)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"

    def dies_half_way(data, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000003", iteration=3)
    monkeypatch.undo()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000001.pth"]
    assert ckpt.resume_or_load("", resume=True)["iteration"] == 1

    (tmp_path / "last_checkpoint").write_text("")  # what an in-place write killed midway leaves
    with pytest.raises(RuntimeError, match="last_checkpoint is empty"):
        ckpt.resume_or_load("", resume=True)


# --- prediction and the demo ------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root) -> Path:
    out = tmp_path_factory.mktemp("trained")
    subprocess.run(_train_cmd(out, "SOLVER.MAX_ITER", "2"), env=_env(data_root), check=True,
                   capture_output=True, timeout=600)
    return out


def test_predict_on_a_scene_larger_than_a_tile(tmp_path, trained, data_root):
    rng = np.random.default_rng(3)
    image, _, _ = render_scene(rng, STYLES["vegas"], size=900)
    scene = tmp_path / "scene.tif"
    with rasterio.open(scene, "w", driver="GTiff", height=900, width=900, count=3, dtype="uint16",
                       crs="EPSG:4326", transform=tile_transform(STYLES["vegas"], 7)) as dst:
        dst.write(to_dn(image)[[4, 2, 1]])
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "predict.py"), "--config-file",
         str(trained / "config.yaml"), "--input", str(scene), "--output", str(tmp_path / "out"),
         "--formats", "parquet,geojson,csv,png",
         "MODEL.WEIGHTS", str(trained / "model_final.pth"), "TEST.SPACENET.SCORE_THRESH", "0.0"],
        env=_env(data_root), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    geojson = json.loads((tmp_path / "out" / "geojson" / "scene.geojson").read_text())
    assert geojson["type"] == "FeatureCollection"
    assert (tmp_path / "out" / "csv" / "scene.csv").read_text().startswith(
        "ImageId,BuildingId,PolygonWKT_Pix,Confidence")
    assert (tmp_path / "out" / "png" / "scene.png").stat().st_size > 0
    assert (tmp_path / "out" / "buildings" / "scene.parquet").stat().st_size > 0
    bad = subprocess.run(
        [sys.executable, str(REPO / "tools" / "predict.py"), "--config-file", str(QUICK),
         "--input", str(scene), "--output", str(tmp_path / "o2")],
        env=_env(data_root), capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "BAND_STATS 'auto'" in bad.stderr


def test_predictor_matches_the_evaluation_path_on_a_tile(trained, data_root, monkeypatch):
    """One 650 px tile through ScenePredictor gives the polygons the evaluator sees."""
    from detectron2.data import DatasetCatalog

    from mnc_d2.data import SpaceNetDatasetMapper
    from mnc_d2.engine.setup import setup_cfg
    from mnc_d2.geometry.instances import instances_to_polygons
    from mnc_d2.inference import ScenePredictor

    monkeypatch.setenv("DETECTRON2_DATASETS", str(data_root))
    cfg = setup_cfg(str(trained / "config.yaml"),
                    ["MODEL.WEIGHTS", str(trained / "model_final.pth"),
                     "TEST.SPACENET.SCORE_THRESH", "0.0"], for_training=False)
    predictor = ScenePredictor(cfg, score_thresh=0.0)
    record = DatasetCatalog.get("spacenet2_vegas_val")[0]
    scene = predictor.predict(record["file_name"], progress=False)
    with torch.no_grad():
        out = predictor.model.model([SpaceNetDatasetMapper(cfg, False)(record)])[0]["instances"]
    direct = instances_to_polygons(out.to("cpu"), 0.0, cfg.TEST.SPACENET.SIMPLIFY_TOLERANCE)
    assert len(scene.polygons) == len(direct) > 0
    assert sorted(round(s, 4) for s in scene.scores) == sorted(round(s, 4) for _, s in direct)
    cfg_no_weights = cfg.clone()
    cfg_no_weights.defrost()
    cfg_no_weights.MODEL.WEIGHTS = ""
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty"):
        ScenePredictor(cfg_no_weights)


def test_a_run_folder_works_from_anywhere(tmp_path, monkeypatch):
    """A run's config.yaml names band_stats.json and itself (OUTPUT_DIR) by paths relative to
    where training ran, and may name a DATASETS.GEO file: predicting or exporting with it from
    another folder, or after the run's folder was copied elsewhere, failed on both (prediction
    reads no dataset), and evaluating it wrote into a new folder there."""
    from detectron2.config import get_cfg

    import mnc_d2
    from mnc_d2.engine.setup import setup_cfg

    run = tmp_path / "copied" / "run"
    run.mkdir(parents=True)
    (run / "band_stats.json").write_text(json.dumps(
        {"bands": [1, 2, 3], "dn_transform": "", "mean": [600.0, 500.0, 400.0],
         "std": [300.0, 200.0, 100.0], "num_images": 4}))
    cfg = get_cfg()
    mnc_d2.add_mnc_config(cfg)
    cfg.INPUT.BANDS = [1, 2, 3]
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = [0.0] * 3, [1.0] * 3
    cfg.INPUT.BAND_STATS = "output/mycity/band_stats.json"  # as training wrote it
    cfg.DATASETS.GEO = "mycity.yaml"  # the training data, not copied
    cfg.OUTPUT_DIR = "output/mycity"
    (run / "config.yaml").write_text(cfg.dump())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    used = setup_cfg(str(run / "config.yaml"), [], for_training=False, needs_datasets=False)
    assert used.INPUT.BAND_STATS == str(run / "band_stats.json")
    assert used.MODEL.PIXEL_MEAN == [600.0, 500.0, 400.0]
    # --eval-only writes into the run's folder (its threshold file where prediction with the
    # run's weights looks), not into a new output/mycity under the working directory; an
    # OUTPUT_DIR on the command line is kept
    assert used.OUTPUT_DIR == str(run)
    assert setup_cfg(str(run / "config.yaml"), ["OUTPUT_DIR", "evaluations"], for_training=False,
                     needs_datasets=False).OUTPUT_DIR == "evaluations"
    # evaluation needs the datasets: their file is still named when it cannot be found
    with pytest.raises(FileNotFoundError, match="DATASETS.GEO mycity.yaml does not exist"):
        setup_cfg(str(run / "config.yaml"), [], for_training=False)


def test_demo_smoke(tmp_path):
    """The demo end to end with a handful of images and iterations (the real run: make demo)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "demo.py"), "--data-root", str(tmp_path / "data"),
         "--output", str(tmp_path / "demo"), "--images", "9", "SOLVER.MAX_ITER", "2", *FAST[:8]],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "mean city F1" in result.stdout and "AOI_3_Paris" in result.stdout
    assert "shape of the matched buildings" in result.stdout or "TP 0 " in result.stdout
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert "spacenet" in json.dumps(metrics)
    # Predictions in tools/predict.py's layout: one GeoParquet per held-out scene, the manifest
    # (every scene ok) and the run record, plus the extra formats.
    predictions = tmp_path / "demo" / "predictions"
    manifest = pd.read_parquet(predictions / "manifest.parquet")
    assert len(manifest) > 0 and set(manifest.status) == {"ok"}
    assert len(list((predictions / "buildings").glob("*.parquet"))) == len(manifest)
    assert (predictions / "run.json").is_file()
    assert len(list((predictions / "geojson").glob("*.geojson"))) == len(manifest)
    # The web map of those predictions, and the command that opens it.
    site = tmp_path / "demo" / "viewer"
    assert (site / "index.html").is_file() and (site / "data" / "buildings.geojson").is_file()
    assert f"python tools/view.py {predictions} --serve" in result.stdout
    # The held-out split is evaluated once (not again by DefaultTrainer's end-of-training hook).
    assert (result.stdout + result.stderr).count("SpaceNet (spacenet rules): F1") == 1
