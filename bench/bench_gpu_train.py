#!/usr/bin/env python
"""Training steps on a CUDA GPU: float32 against automatic mixed precision (``SOLVER.AMP``).

Detectron2's ``DefaultTrainer`` (mnc_d2's ``Trainer``) trains with ``torch.autocast(float16)``
and a gradient scaler when ``SOLVER.AMP.ENABLED`` is set, the usual choice on a GPU. Whether
MNC's heads train under it, and what it buys, cannot be seen on a CPU (autocast casts other
operators there), so this runs on the GPU machine of bench_gpu.py, from the same bundle:

    python -m bench.bench_gpu_train --bundle .gpu --out r.json    # on the GPU machine

Per model (the bundle's R-18 pair and R-50 configs) and precision: ITERS training steps of
batch 2 on the bundle's tiles at 650 px with SYNTHETIC targets (20 random axis-aligned boxes
per tile as box-shaped polygon masks: the GPU machine has no labels; the targets only give the
heads work of a realistic size), SGD at a small learning rate from the bundle's weights (R-18
trained, R-50 random). Reported: median seconds per step after WARMUP steps, peak GPU memory,
whether every loss stayed finite, and the error of any step that failed. A speed and dtype
check, not an accuracy measurement.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.bench_gpu import R50, _load_cfg, _weights_file

ITERS = 25
WARMUP = 5
BOXES = 20
logger = logging.getLogger("bench_gpu_train")


def synthetic_batch(tiles: list[np.ndarray], device: str, seed: int, boxes: int = BOXES):
    """Detectron2 training inputs: each tile (H, W, C) as a (C, H, W) float tensor with
    ``boxes`` random boxes (8-80 px sides) as gt_boxes, class 0 and box-shaped polygon masks."""
    import torch
    from detectron2.structures import Boxes, Instances, PolygonMasks

    rng = np.random.default_rng(seed)
    out = []
    for tile in tiles:
        h, w = tile.shape[:2]
        size = np.minimum(rng.uniform(8, 80, (boxes, 2)), [w / 2, h / 2])  # small tiles too
        x0 = rng.uniform(0, w - size[:, 0])
        y0 = rng.uniform(0, h - size[:, 1])
        xyxy = np.stack([x0, y0, x0 + size[:, 0], y0 + size[:, 1]], 1).astype(np.float32)
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.from_numpy(xyxy))
        inst.gt_classes = torch.zeros(boxes, dtype=torch.int64)
        inst.gt_masks = PolygonMasks([[np.array([a, b, c, b, c, d, a, d], dtype=np.float64)]
                                      for a, b, c, d in xyxy])
        out.append({"image": torch.from_numpy(tile.transpose(2, 0, 1).copy()).to(device),
                    "instances": inst.to(device), "height": h, "width": w})
    return out


def train_steps(cfg, tiles: list[np.ndarray], amp: bool, iters: int = ITERS,
                warmup: int = WARMUP) -> dict:
    """``iters`` SGD steps of ``cfg``'s model (MODEL.WEIGHTS loaded) on synthetic targets,
    float32 or under autocast(float16) with a gradient scaler, as Detectron2's AMPTrainer."""
    import torch
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from mnc_d2.modeling.checkpoint import build_checkpointer

    device = cfg.MODEL.DEVICE
    torch.manual_seed(0)
    model = build_model(cfg)
    build_checkpointer(cfg, model).load(cfg.MODEL.WEIGHTS)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.startswith("cuda"))
    times, finite = [], True
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    storage = EventStorage(0).__enter__()  # the heads log training statistics into it
    for step in range(iters):
        storage.iter = step
        batch = synthetic_batch(tiles, device, seed=step)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        began = time.perf_counter()
        with torch.autocast(device.split(":")[0], dtype=torch.float16, enabled=amp):
            losses = model(batch)
        total = sum(losses.values())
        optimizer.zero_grad()
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
        finite &= bool(torch.isfinite(total.detach()).item())
    storage.__exit__(None, None, None)
    out = {"s_per_step_median": round(statistics.median(times[warmup:] or times), 5),
           "steps": iters, "timed_steps": len(times[warmup:] or times), "losses_finite": finite,
           "last_losses": {k: round(float(v), 4) for k, v in losses.items()}}
    if device.startswith("cuda"):
        out["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    return out


def run(bundle: Path, out_path: Path, models: list[str], iters: int) -> dict:
    import torch

    import mnc_d2

    mnc_d2.setup()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with np.load(bundle / "tiles.npz") as saved:
        tiles = [t.astype(np.float32) for t in saved["tiles"]][:2]  # batch 2
    report = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
              "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
              "batch": len(tiles), "tile_px": list(tiles[0].shape[:2]), "iters": iters,
              "warmup": min(WARMUP, iters - 1), "targets": f"{BOXES} random boxes per tile",
              "runs": {}, "errors": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            cfg = _load_cfg(bundle / f"{name}.yaml", device)
            cfg.defrost()
            cfg.MODEL.WEIGHTS = str(_weights_file(bundle, name, cfg, Path(tmp)))
            for amp in (False, True):
                label = f"{name} / {'amp fp16' if amp else 'fp32'}"
                try:
                    report["runs"][label] = train_steps(cfg, tiles, amp, iters,
                                                        min(WARMUP, iters - 1))
                    logger.info("%s: %s", label, report["runs"][label])
                except Exception as exc:  # noqa: BLE001 - reported, the others still run
                    logger.exception("%s failed", label)
                    report["errors"][label] = f"{type(exc).__name__}: {exc}"
                if device == "cuda":
                    torch.cuda.empty_cache()
                out_path.write_text(json.dumps(report, indent=1))
    for name in models:
        base = report["runs"].get(f"{name} / fp32")
        amp = report["runs"].get(f"{name} / amp fp16")
        if base and amp:
            amp["speedup_vs_fp32"] = round(base["s_per_step_median"] / amp["s_per_step_median"], 3)
    out_path.write_text(json.dumps(report, indent=1))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path(".gpu"))
    parser.add_argument("--out", type=Path, default=Path("bench_gpu_train.json"))
    parser.add_argument("--models", nargs="+",
                        default=["mnc5_r18", "mask_rcnn_r18", *(f"{m}_r50" for m in R50)])
    parser.add_argument("--iters", type=int, default=ITERS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    report = run(args.bundle, args.out, args.models, args.iters)
    for label, r in report["runs"].items():
        print(f"{label:28s} {r['s_per_step_median'] * 1e3:8.1f} ms/step  "
              f"x fp32 {r.get('speedup_vs_fp32', '-')}  finite {r['losses_finite']}  "
              f"mem {r.get('peak_gpu_memory_gb', '-')} GB")
    for label, err in report["errors"].items():
        print(f"ERROR {label}: {err[:300]}")


if __name__ == "__main__":
    main()
