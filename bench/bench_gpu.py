#!/usr/bin/env python
"""Seconds per tile on a CUDA GPU: MNC vs Mask R-CNN, eager PyTorch in float32 and float16, and
the exported TorchScript graph.

A GPU machine of ours has PyTorch but neither the benchmark's data nor Detectron2 nor the
geospatial stack, so the benchmark runs in two steps:

    python -m bench.bench_gpu prepare --bundle .gpu          # here: configs, weights, tiles
    python -m bench.bench_gpu run --bundle .gpu --out r.json  # on the GPU machine

The GPU machine needs PyTorch, torchvision and numpy, plus wheels carried along: the
pure-Python Detectron2 wheel ``make`` builds (.cache/detectron2/wheels), its pure-Python
dependencies (antlr4-python3-runtime, fvcore, iopath, omegaconf, termcolor, yacs; ``pip wheel``
builds those that PyPI has only as sources) and pycocotools built for that machine's Python.
The run imports neither rasterio nor shapely (mnc_d2.inference.eager, mnc_d2.export.graph).

``prepare`` writes the R-18 benchmark pair of bench_accuracy.py (``default`` setting, seed
SPEED_SEED, the models bench_export.py times on the CPU) with their weights' multi-dimensional
tensors rounded to float16 for transport (biases and norm statistics stay float32; both
precisions below run from these same weights), the R-50 SpaceNet 2 configs of MNC and Mask R-CNN
(random initialisation on the GPU, seed 0: no trained R-50 exists here, so their detections per
tile are whatever a random head keeps and are reported beside the times), and TILES of the
benchmark's held-out test tiles, as the models read them.

``run`` times, per model and input size (416 px = the R-18 configs' test size, 650 px =
native), seconds per 650 x 650 px tile from band values to masks pasted at tile size, CUDA
synchronised:

* ``eager fp32``: Detectron2's model as tools/predict.py runs it (mnc_d2.inference.eager), at
  PyTorch's default precision settings (cuDNN may use TF32 for convolutions; recorded);
* ``eager fp16``: the same under ``torch.autocast(float16)``;
* ``torchscript``: the model exported as tools/export_model.py ``--device cuda --formats
  torchscript`` does (mnc_d2.export.exporter.export_model: the export graph traced on the GPU)
  and run by mnc_d2.export.runtime.ExportedModel on the device it records, masks pasted on the
  CPU, as tools/predict.py ``--backend torchscript`` runs it;
* ``torchscript (CPU export)``: the graph traced on the CPU as tools/export_model.py does,
  saved and loaded onto the GPU with ``torch.jit.load(map_location="cuda")``. The trace holds
  ``torch.device("cpu")`` constants (mnc_d2.export.runtime.traced_devices), so this is expected
  to fail with a device mismatch (on an H200 it did: BENCHMARKS.md section 9), which is why
  ``ExportedModel`` refuses a GPU for such an export; the row records what the GPU says;
* batch 1 (one tile per call, as the latency of a tile) and, for eager, batch BATCH
  (tools/predict.py's ``--batch-size``; seconds per tile = per call / BATCH).

Rounds alternate the order of the models of one input size. Agreement with eager float32 on the
trained pair (tiles' detections at the config's polygon threshold, and all that the model
keeps, matched by mask IoU) is reported for float16 and TorchScript; also FLOPs per tile
(fvcore on the export graph, as bench_export.py) against the GPU's measured matmul rates.
Writes the report after each part, so a run stopped early keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TILES = 4  # test tiles carried to the GPU machine (two per city; its upload is limited)
BATCH = 8
TILE = 650
SIZES = {"416": (), "650": ("INPUT.MIN_SIZE_TEST", "650", "INPUT.MAX_SIZE_TEST", "650")}
R50 = {"mnc5": "configs/SpaceNet2/mnc_R_50_FPN_3x_all.yaml",
       "mask_rcnn": "configs/SpaceNet2/mask_rcnn_R_50_FPN_3x_all.yaml"}
logger = logging.getLogger("bench_gpu")


# --- prepare (this machine) -------------------------------------------------------------------

def _small_weights(src: Path, dest: Path) -> None:
    """model_final.pth -> npz: tensors of 2+ dimensions as float16, the rest as they are."""
    import torch

    state = torch.load(src, map_location="cpu", weights_only=False)["model"]
    arrays = {}
    for key, value in state.items():
        value = value.detach().cpu().numpy()
        if value.ndim >= 2 and value.dtype == np.float32:
            value = value.astype(np.float16)
        arrays[key] = value
    np.savez_compressed(dest, **arrays)


def prepare(bundle: Path) -> None:
    from bench.bench_export import MNC, MRCNN, RUNS, SPEED_SEED, TEST, _cfg, _read_tiles, _tiles
    from mnc_d2.data.bands import input_bands
    from mnc_d2.engine.setup import setup_cfg
    from mnc_d2.inference.scenes import sha256_of

    bundle.mkdir(parents=True, exist_ok=True)
    meta = {"models": {}, "speed_seed": SPEED_SEED}
    base = None
    for name, run_name in (("mnc5", MNC["default"]), ("mask_rcnn", MRCNN)):
        run = RUNS / run_name / f"seed{SPEED_SEED}"
        cfg = _cfg(run)
        base = base or cfg
        cfg.defrost()
        cfg.MODEL.WEIGHTS, cfg.INPUT.BAND_STATS = "", ""  # weights beside; statistics baked in
        (bundle / f"{name}_r18.yaml").write_text(cfg.dump())
        _small_weights(run / "model_final.pth", bundle / f"{name}_r18.npz")
        meta["models"][f"{name}_r18"] = {"run": str(run.relative_to(REPO)),
                                         "weights_sha256": sha256_of(run / "model_final.pth")}
    stats = ["INPUT.BANDS", str(list(base.INPUT.BANDS)),
             "MODEL.PIXEL_MEAN", str(list(base.MODEL.PIXEL_MEAN)),
             "MODEL.PIXEL_STD", str(list(base.MODEL.PIXEL_STD))]
    for name, config in R50.items():
        cfg = setup_cfg(str(REPO / config), ["MODEL.WEIGHTS", "", "INPUT.BAND_STATS", "",
                                             *stats], for_training=False)
        (bundle / f"{name}_r50.yaml").write_text(cfg.dump())
        meta["models"][f"{name}_r50"] = {"config": config, "weights": "random init, seed 0"}
    paths = _tiles(TEST["default"])
    cities = sorted({Path(p).parts[-3] for p in paths})
    picked = [p for city in cities for p in [q for q in paths if f"/{city}/" in q][:2]][:TILES]
    tiles = _read_tiles(picked, input_bands(base), base.MODEL.PIXEL_MEAN)
    stack = np.stack(tiles)
    if not np.array_equal(stack, np.round(stack)) or stack.min() < 0 or stack.max() > 65535:
        raise ValueError("the benchmark tiles are not 16-bit DNs; carry them as float32")
    np.savez_compressed(bundle / "tiles.npz", tiles=stack.astype(np.uint16))
    meta["tiles"] = [str(Path(p).relative_to(REPO)) for p in picked]
    (bundle / "meta.json").write_text(json.dumps(meta, indent=1))
    size = sum(f.stat().st_size for f in bundle.iterdir())
    logger.info("wrote %s (%.1f MB)", bundle, size / 1e6)


# --- run (the GPU machine) --------------------------------------------------------------------

def _load_cfg(path: Path, device: str, *opts: str):
    """A prepared config (fully resolved: no band statistics to compute, no dataset needed)."""
    from detectron2.config import get_cfg

    from mnc_d2.config import add_mnc_config

    cfg = get_cfg()
    add_mnc_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(["MODEL.DEVICE", device, *opts])
    return cfg


def _weights_file(bundle: Path, name: str, cfg, work: Path) -> Path:
    """A Detectron2 checkpoint of the bundle's weights (float32), or of a random init."""
    import torch
    from detectron2.modeling import build_model

    dest = work / f"{name}.pth"
    if not dest.is_file():
        npz = bundle / f"{name}.npz"
        if npz.is_file():
            with np.load(npz) as saved:
                state = {k: torch.from_numpy(saved[k].astype(np.float32)
                                             if saved[k].dtype == np.float16 else saved[k])
                         for k in saved.files}
        else:
            torch.manual_seed(0)
            cpu = cfg.clone()
            cpu.defrost()
            cpu.MODEL.DEVICE = "cpu"
            state = build_model(cpu).state_dict()
        torch.save({"model": state}, dest)
    return dest


class _Graph:
    """An export graph on the GPU: tiles -> Detections, masks pasted on the CPU (as
    mnc_d2.export.runtime.ExportedModel)."""

    def __init__(self, module, device: str, fill: np.ndarray):
        self.module, self.device, self.fill = module, device, fill

    def __call__(self, images):
        import torch

        from mnc_d2.export.runtime import Detections, graph_input, paste_masks

        out = []
        for image in images:
            x = torch.from_numpy(graph_input(image, image.shape[:2], self.fill)).to(self.device)
            with torch.no_grad(), torch.jit.optimized_execution(False):
                boxes, scores, classes, masks = [t.cpu().numpy() for t in self.module(x)]
            out.append(Detections(boxes, scores, classes,
                                  paste_masks(masks, boxes, *image.shape[:2])))
        return out


def _runners(bundle: Path, name: str, device: str, size_opts: tuple, work: Path,
             exported: bool, batch: int) -> dict:
    """label -> (fn(list of tiles) -> detections, batch)."""
    import torch

    from mnc_d2.export.bundle import read_bundle
    from mnc_d2.export.exporter import build_graph, export_model
    from mnc_d2.export.runtime import ExportedModel
    from mnc_d2.inference.eager import EagerModel

    cfg = _load_cfg(bundle / f"{name}.yaml", device, *size_opts)
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(_weights_file(bundle, name, cfg, work))
    fp32 = EagerModel(cfg)
    fp16 = copy.copy(fp32)  # the same model and weights, run under autocast
    fp16.autocast = torch.float16
    out = {"eager fp32": (fp32, 1), "eager fp16": (fp16, 1),
           f"eager fp32 batch {batch}": (fp32, batch), f"eager fp16 batch {batch}": (fp16, batch)}
    if not exported:
        return out
    fill = np.asarray(cfg.MODEL.PIXEL_MEAN, np.float32)
    sample = torch.from_numpy(  # as the exporter's trace tile: band means plus noise
        np.random.default_rng(0).normal(fill, cfg.MODEL.PIXEL_STD, (TILE, TILE, len(fill)))
        .astype(np.float32).transpose(2, 0, 1).copy())[None].to(device)
    try:  # as tools/export_model.py --device DEVICE --formats torchscript
        folder = export_model(cfg, work / f"{name}_{size_opts[1] if size_opts else 'config'}",
                              ("torchscript",), TILE, device=device)
        exported_model = ExportedModel(read_bundle(folder), "torchscript")  # its traced device
        out["torchscript"] = (lambda images: [exported_model(i) for i in images], 1)
    except Exception as exc:  # noqa: BLE001 - reported, the other variants still run
        logger.exception("torchscript on %s failed", device)
        out["torchscript"] = (f"{type(exc).__name__}: {exc}", 1)
    try:  # as tools/export_model.py: built and traced on the CPU, saved, loaded on the GPU
        cpu_graph = build_graph(cfg, TILE, "cpu")
        path = work / f"{name}_{size_opts[1] if size_opts else 'config'}_cpu.ts"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.jit.trace(cpu_graph, (sample.cpu(),), check_trace=False).save(str(path))
        loaded = torch.jit.load(str(path), map_location=device).eval()
        out["torchscript (CPU export)"] = (_Graph(loaded, device, fill), 1)
    except Exception as exc:  # noqa: BLE001
        logger.exception("the CPU export on %s failed", device)
        out["torchscript (CPU export)"] = (f"{type(exc).__name__}: {exc}", 1)
    return out


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(runners: dict, tiles: list[np.ndarray], rounds: int, device: str) -> dict:
    """label -> seconds per tile of every timed call; runners' order reversed every other
    round; two warm-up calls per runner and round."""
    times = {label: [] for label, (fn, _) in runners.items() if callable(fn)}
    labels = list(times)
    for r in range(rounds):
        for label in (labels if r % 2 == 0 else labels[::-1]):
            fn, batch = runners[label]
            calls = ([tiles[i:i + 1] for i in range(len(tiles))] if batch == 1
                     else [[tiles[i % len(tiles)] for i in range(batch)]])
            for _ in range(2):
                fn(calls[0])
            for call in calls:
                _sync(device)
                began = time.perf_counter()
                fn(call)
                _sync(device)
                times[label].append((time.perf_counter() - began) / len(call))
    return times


def _as_masks(found) -> tuple[np.ndarray, np.ndarray]:
    """Instances (torch) or Detections (numpy) -> (scores (R,), masks (R, H, W) bool)."""
    scores, masks = found.scores, found.pred_masks
    if hasattr(scores, "numpy"):
        scores, masks = scores.numpy(), masks.numpy()
    return np.asarray(scores), np.asarray(masks).astype(bool)


def agreement(reference: list, other: list, thresh: float) -> dict:
    """Detections at or above ``thresh`` of ``other`` against ``reference`` per tile: greedy
    one-to-one matching by mask IoU (best first); matched share at IoU >= 0.5 and >= 0.9 and the
    largest score difference of the matched pairs."""
    counts, matched50, matched90, ious, score_diffs = [0, 0], 0, 0, [], []
    for ref, oth in zip(reference, other):
        (rs, rm), (os_, om) = _as_masks(ref), _as_masks(oth)
        rm, om, rs, os_ = rm[rs >= thresh], om[os_ >= thresh], rs[rs >= thresh], os_[os_ >= thresh]
        counts[0] += len(rs)
        counts[1] += len(os_)
        if not len(rs) or not len(os_):
            continue
        a = rm.reshape(len(rm), -1).astype(np.float32)
        b = om.reshape(len(om), -1).astype(np.float32)
        inter = a @ b.T
        union = a.sum(1)[:, None] + b.sum(1)[None] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        used_r, used_o = set(), set()
        for flat in np.argsort(-iou, axis=None):
            i, j = np.unravel_index(flat, iou.shape)
            if iou[i, j] < 0.5:
                break
            if i in used_r or j in used_o:
                continue
            used_r.add(i)
            used_o.add(j)
            ious.append(float(iou[i, j]))
            score_diffs.append(abs(float(rs[i]) - float(os_[j])))
        matched50 += len(used_r)
        matched90 += sum(1 for v in ious[-len(used_r):] if v >= 0.9) if used_r else 0
    return {"reference_detections": counts[0], "detections": counts[1],
            "matched_iou50": matched50, "matched_iou90": matched90,
            "median_matched_iou": round(statistics.median(ious), 4) if ious else None,
            "max_score_diff": round(max(score_diffs), 4) if score_diffs else None}


def matmul_rates(device: str, n: int = 8192, repeats: int = 10) -> dict:
    """TFLOP/s of n x n matmuls on the GPU: float32 (TF32 off), TF32, float16, bfloat16;
    median of ``repeats`` after 3 warm-ups, random inputs."""
    import torch

    out = {}
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        for label, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                                   ("fp16", torch.float16, False), ("bf16", torch.bfloat16, False)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            for _ in range(3):
                a @ b
            times = []
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                    enable_timing=True)
                start.record()
                a @ b
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            out[label] = round(2 * n ** 3 / statistics.median(times) / 1e12, 1)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return out


def _graph_flops(bundle: Path, name: str, device: str, size_opts: tuple, work: Path,
                 tile: np.ndarray) -> dict:
    import torch

    from bench.bench_export import graph_flops
    from mnc_d2.export.exporter import build_graph

    cfg = _load_cfg(bundle / f"{name}.yaml", device, *size_opts)
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(_weights_file(bundle, name, cfg, work))
    x = torch.from_numpy(tile.transpose(2, 0, 1).copy())[None].to(device)
    return graph_flops(build_graph(cfg, TILE, device), x)


def run(bundle: Path, out_path: Path, rounds: int, quick: bool, batch: int = BATCH) -> dict:
    import torch

    import mnc_d2

    mnc_d2.setup()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    meta = json.loads((bundle / "meta.json").read_text())
    with np.load(bundle / "tiles.npz") as saved:
        tiles = [t.astype(np.float32) for t in saved["tiles"]]
    if quick:
        tiles = tiles[:1]
    report = {"machine": platform.node(), "device": device, "torch": torch.__version__,
              "cuda": torch.version.cuda, "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
              "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
              "cpu_count": os.cpu_count(), "rounds": rounds, "tiles": meta["tiles"][:len(tiles)],
              "batch": batch, "bundle": meta, "times": {}, "agreement": {}, "flops": {},
              "errors": {}}
    if device == "cuda":
        report["gpu"] = torch.cuda.get_device_name(0)
        report["matmul_tflops"] = matmul_rates(device)

    def save() -> None:
        tmp = out_path.with_name(out_path.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(out_path)

    save()
    groups = [("r18", size, opts) for size, opts in SIZES.items()] + [("r50", "650", ())]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for arch, size, opts in groups:
            runners, found, thresholds = {}, {}, {}
            for model in ("mnc5", "mask_rcnn"):
                name = f"{model}_{arch}"
                thresholds[model] = float(
                    _load_cfg(bundle / f"{name}.yaml", device).TEST.SPACENET.SCORE_THRESH)
                try:
                    for label, runner in _runners(bundle, name, device, opts, work,
                                                  not quick or arch == "r18", batch).items():
                        runners[f"{model} {arch} {size} px / {label}"] = runner
                except Exception as exc:  # noqa: BLE001
                    logger.exception("%s failed", name)
                    report["errors"][f"{name} {size}"] = f"{type(exc).__name__}: {exc}"
            for label, (fn, _) in runners.items():
                if not callable(fn):
                    report["errors"][label] = fn
                    continue
                if "batch" in label:
                    continue
                try:
                    found[label] = fn(tiles)
                except Exception as exc:  # noqa: BLE001
                    logger.exception("%s failed", label)
                    report["errors"][label] = f"{type(exc).__name__}: {exc}"
            runners = {k: v for k, v in runners.items()
                       if k in found or ("batch" in k and callable(v[0])
                                         and k.replace(f" batch {batch}", "") in found)}
            for label, result in found.items():
                thresh = thresholds[label.split(" ")[0]]
                report["times"].setdefault(label, {})["detections_per_tile"] = [
                    len(r) for r in result]
                reference = label.split(" / ")[0] + " / eager fp32"
                if arch == "r18" and label != reference and reference in found:
                    try:
                        report["agreement"][label] = {
                            "at_threshold": agreement(found[reference], result, thresh),
                            "threshold": thresh,
                            "kept": agreement(found[reference], result, 0.0)}
                    except Exception as exc:  # noqa: BLE001
                        logger.exception("agreement of %s failed", label)
                        report["errors"][f"agreement {label}"] = f"{type(exc).__name__}: {exc}"
            try:
                times = _timed(runners, tiles, rounds, device)
            except Exception as exc:  # noqa: BLE001
                logger.exception("timing %s %s failed", arch, size)
                report["errors"][f"timing {arch} {size}"] = f"{type(exc).__name__}: {exc}"
                times = {}
            for label, values in times.items():
                entry = report["times"].setdefault(label, {})
                entry.update({"s_per_tile_median": round(statistics.median(values), 5),
                              "n": len(values)})
            for label, entry in report["times"].items():
                if " / " not in label or "s_per_tile_median" not in entry:
                    continue
                model_part, variant = label.split(" / ")
                if model_part.startswith("mnc5"):
                    other = report["times"].get(label.replace("mnc5", "mask_rcnn", 1), {})
                    if "s_per_tile_median" in other:
                        entry["ratio_vs_mask_rcnn"] = round(
                            entry["s_per_tile_median"] / other["s_per_tile_median"], 3)
                eager = report["times"].get(f"{model_part} / eager fp32", {})
                if variant != "eager fp32" and "s_per_tile_median" in eager:
                    entry["speedup_vs_eager_fp32"] = round(
                        eager["s_per_tile_median"] / entry["s_per_tile_median"], 3)
            save()
            logger.info("%s %s px timed", arch, size)
        for arch, size, opts in groups:
            for model in ("mnc5", "mask_rcnn"):
                label = f"{model} {arch} {size} px"
                try:
                    report["flops"][label] = _graph_flops(bundle, f"{model}_{arch}", device,
                                                          opts, work, tiles[0])
                except Exception as exc:  # noqa: BLE001
                    report["errors"][f"flops {label}"] = f"{type(exc).__name__}: {exc}"
        save()
    return report


def summary(report: dict) -> str:
    lines = [f"{report.get('gpu', report['device'])}, torch {report['torch']}, "
             f"matmul TFLOP/s {report.get('matmul_tflops')}"]
    for label, entry in report["times"].items():
        if "s_per_tile_median" in entry:
            lines.append(f"{label:52s} {1e3 * entry['s_per_tile_median']:8.2f} ms/tile  "
                         f"vs MRCNN {entry.get('ratio_vs_mask_rcnn', '-')}  "
                         f"vs eager {entry.get('speedup_vs_eager_fp32', '-')}  "
                         f"dets {entry.get('detections_per_tile', '-')}")
    for label, entry in report["agreement"].items():
        lines.append(f"agree {label}: {entry}")
    lines.append("GFLOPs " + ", ".join(f"{k}: {v['gflops']}" for k, v in report["flops"].items()))
    for label, error in report["errors"].items():
        lines.append(f"ERROR {label}: {error[:300]}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("prepare", "run"))
    parser.add_argument("--bundle", type=Path, default=REPO / ".gpu")
    parser.add_argument("--out", type=Path, default=Path("bench_gpu.json"))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch", type=int, default=BATCH, help="tiles per call, batched rows")
    parser.add_argument("--quick", action="store_true",
                        help="one tile, one round, no R-50 export (a check of the script)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.step == "prepare":
        prepare(args.bundle)
        return
    report = run(args.bundle, args.out, 1 if args.quick else args.rounds, args.quick, args.batch)
    print(summary(report))


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
