"""`make demo`: synthetic SpaceNet-layout data -> MNC training -> SpaceNet evaluation ->
prediction on held-out GeoTIFFs -> summary, all under ``output/demo/``.

Re-running reuses what exists: the data set (if generated with the same parameters) and the
trained model (``model_final.pth``; delete it, or pass ``--retrain``, to train again).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

from detectron2.data import DatasetCatalog
from detectron2.engine import default_setup

from .synthetic import ensure_synthetic
from .engine.setup import setup_cfg
from .engine.trainer import Trainer
from .evaluation.visualize import visualize_csvs
from .utils.atomic import atomic_write
from .utils.logs import configure_cli_logging

logger = logging.getLogger("mnc_d2.demo")

DEFAULT_CONFIG = "configs/quick_schedules/mnc_R_18_FPN_demo_synthetic.yaml"


def _train(cfg, retrain: bool) -> None:
    final = Path(cfg.OUTPUT_DIR) / "model_final.pth"
    if final.exists() and not retrain:
        logger.info("found %s: skipping training (pass --retrain to train again)", final)
        return
    if cfg.TEST.EVAL_PERIOD <= 0:
        # DefaultTrainer's EvalHook evaluates DATASETS.TEST once more after the last iteration
        # even without periodic evaluation; the demo evaluates model_final itself right after.
        cfg = cfg.clone()
        cfg.defrost()
        cfg.DATASETS.TEST = ()
        cfg.freeze()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=not retrain)
    trainer.train()


def _evaluate(cfg) -> dict:
    model = Trainer.build_model(cfg)
    from .modeling.checkpoint import build_checkpointer

    build_checkpointer(cfg, model).load(str(Path(cfg.OUTPUT_DIR) / "model_final.pth"))
    return Trainer.test(cfg, model)


def _predict_held_out(cfg, out_dir: Path) -> None:
    """``tools/predict.py`` over the held-out GeoTIFFs, so the demo's predictions have its layout
    (buildings/*.parquet, manifest.parquet, run.json) plus GeoJSON, SpaceNet CSV and PNG."""
    from .inference.run import main as predict_main

    files = [d["file_name"] for d in DatasetCatalog.get(cfg.DATASETS.TEST[0])]
    status = predict_main(["--config-file", str(Path(cfg.OUTPUT_DIR) / "config.yaml"),
                           "--input", *files, "--output", str(out_dir), "--overwrite",
                           "--formats", "parquet,geojson,csv,png",
                           "MODEL.WEIGHTS", str(Path(cfg.OUTPUT_DIR) / "model_final.pth")])
    if status != 0:
        raise RuntimeError(f"prediction on the held-out scenes failed (exit {status}); see "
                           f"{out_dir / 'manifest.parquet'}")


def summary_lines(metrics: dict, out_dir: Path, seconds: float) -> list[str]:
    sn = metrics["spacenet"]
    cities = sorted({k.split("/")[0] for k in sn if k.endswith("/precision")})
    lines = ["", "mnc_d2 demo: MNC (5-stage, RoI warping) on synthetic SpaceNet-layout data",
             f"{'city':<16}{'precision':>10}{'recall':>10}{'F1':>10}"]
    for city in cities:
        lines.append(f"{city:<16}{sn[city + '/precision']:>10.3f}{sn[city + '/recall']:>10.3f}"
                     f"{sn[city + '/F1']:>10.3f}")
    lines += [f"{'all (global)':<16}{sn['precision']:>10.3f}{sn['recall']:>10.3f}{sn['F1']:>10.3f}",
              f"mean city F1 (the SpaceNet 2 score): {sn['score']:.3f}",
              f"TP {int(sn['TP'])}  FP {int(sn['FP'])}  FN {int(sn['FN'])}"]
    if "best_threshold" in sn:
        lines += [f"score threshold sweep: best {sn['best_threshold']:.2f} (mean city F1 "
                  f"{sn['best_threshold/score']:.3f}; used by the predictions), score "
                  f"calibration error (ECE) {sn['ECE']:.3f}"]
    if "shape/iou" in sn:
        lines += [f"shape of the matched buildings: mean IoU {sn['shape/iou']:.3f}, C-IoU "
                  f"{sn['shape/ciou']:.3f}, N-ratio {sn['shape/n_ratio']:.2f}, PoLiS "
                  f"{sn['shape/polis']:.2f} m, max tangent angle error {sn['shape/mta']:.1f} deg, "
                  f"boundary F (1 m) {sn['shape/boundary_f']:.3f}"]
    lines += [f"files in {out_dir}/: metrics.json, inference/*/spacenet_proposals.csv, "
              "predictions/ (tools/predict.py's layout: buildings/*.parquet, manifest.parquet, "
              "run.json, geojson/, csv/, png/), overlays/*_score.png, viewer/ (the web map)",
              viewer_line(out_dir), f"total time {seconds / 60:.1f} min", ""]
    return lines


def viewer_line(out_dir: Path) -> str:
    if (out_dir / "viewer" / "index.html").is_file():
        return ("see the predictions on a map over the imagery (offline): "
                f"python tools/view.py {out_dir / 'predictions'} --serve --port 8000, then "
                "open http://127.0.0.1:8000/")
    return "web map not written (MapLibre GL JS not vendored: make setup needs npm once)"


def _write_viewer(predictions: Path, site: Path) -> None:
    """The web map of the held-out predictions (skipped, with the reason, without the vendored
    map library)."""
    from .viewer.assets import AssetsMissing
    from .viewer.site import build_site

    try:
        build_site(predictions, site)
    except AssetsMissing as exc:
        logger.warning("no web map: %s", exc)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="mnc_d2 end-to-end demo on synthetic data")
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--data-root", default="datasets/synthetic")
    parser.add_argument("--output", default="output/demo")
    parser.add_argument("--cities", nargs="+", default=["vegas", "paris"])
    parser.add_argument("--images", type=int, default=60, help="images per city")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    start = time.time()
    configure_cli_logging(fmt="[%(asctime)s %(name)s] %(message)s")
    data_root, out_dir = Path(args.data_root).resolve(), Path(args.output).resolve()
    ensure_synthetic(data_root, args.cities, args.images, args.seed)
    os.environ["DETECTRON2_DATASETS"] = str(data_root)
    cfg = setup_cfg(args.config_file, ["OUTPUT_DIR", str(out_dir), *args.opts],
                    log_to_output=True)
    default_setup(cfg, argparse.Namespace(config_file=args.config_file, eval_only=False,
                                          opts=args.opts))
    _train(cfg, args.retrain)
    results = _evaluate(cfg)
    metrics = next(iter(results.values())) if "spacenet" not in results else results
    with atomic_write(out_dir / "metrics.json", "w") as f:
        json.dump({"config": args.config_file, "results": results}, f, indent=2)
    _predict_held_out(cfg, out_dir / "predictions")
    _write_viewer(out_dir / "predictions", out_dir / "viewer")
    proposals = out_dir / "inference" / cfg.DATASETS.TEST[0] / "spacenet_proposals.csv"
    _overlays(data_root / "spacenet", proposals, out_dir / "overlays")
    print("\n".join(summary_lines(metrics, out_dir, time.time() - start)))
    return 0


def _overlays(spacenet_root: Path, proposals: Path, out: Path) -> None:
    """TP/FP/FN overlays of the evaluated images, city by city (RGB-PanSharpen tiles)."""
    evaluated = {line.split(",", 1)[0] for line in proposals.read_text().splitlines()[1:]}
    for aoi in sorted(spacenet_root.glob("AOI_*_Train")):
        ids = sorted(i for i in evaluated if i.startswith(aoi.name.replace("_Train", "_img")))
        if ids:
            visualize_csvs(aoi / "summaryData" / f"{aoi.name}_Building_Solutions.csv", proposals,
                           aoi / "RGB-PanSharpen", out, image_ids=ids)
