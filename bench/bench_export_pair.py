#!/usr/bin/env python
"""A trained MNC and Mask R-CNN pair of any bench_accuracy.py variant, exported and timed side by
side: the deployment numbers of a recipe (bench_export.py measures the demo pair).

For each model seed:

1. **Accuracy** (``--parts accuracy``): the MNC run exported (tools/export_model.py, float ONNX
   and its int8 graph calibrated on ``--calibration-images`` tiles of the run's own training
   data) and each ``--test-settings`` test set predicted by tools/predict.py on eager PyTorch,
   onnxruntime, OpenVINO, onnxruntime-int8 and openvino-int8 (``--backends``: a subset, eager
   always among them), scored with the SpaceNet metric: mean city F1, TP / FP / FN and the
   difference from eager. The test sets are bench_accuracy.py's benchmark tiles (generator seed
   1), or with ``--test-seed N`` tiles of another seed, generated when missing. With
   ``--openvino-warps roialign`` the export also holds OpenVINO's own graphs (``--formats
   onnx-openvino,onnx-int8-openvino``, the RoIAlign form), which predict.py's openvino
   backends then run; each row records the graph file it ran and that graph's warps.
2. **MNC / Mask R-CNN, paired** (``--parts paired``): the seed's MNC and Mask R-CNN (the same
   seed number) on the same tiles of the training setting's test set, back to back on one
   backend, at the input size their configs test at (bench_export.py's ``_paired_rows``: ratio
   per tile, median and quartiles, and each model's median seconds per tile).
3. **Detections** (``--parts detections``): detections per timed tile of both models on
   onnxruntime, all kept and at the config's polygon threshold (the heads' and pasting's work
   grows with them, so the ratio is only fair between models that keep similar numbers).
4. **FLOPs** (``--parts flops``): both exported graphs on one tile, by part (bench_export's
   ``graph_flops``).
5. **The int8 graph's head pooling** (``--parts pools``): the MNC's int8 graph as exported
   (its classification heads' max pooling reads the float32 warped features) against the same
   file with that pooling reading the features' quantise / dequantise round trip, as
   onnxruntime's quantiser writes it and as int8 exports without ``float_pool_inputs`` in
   export.json have it (:func:`quantised_pools`), per tile paired on each int8 backend of
   ``--backends``. Exports whose classification heads pool grid sampling's own output (this
   version's, but with ``MODEL.MNC.ROI_WARP roialign``) rewire nothing: the part then has no
   rows for them.
6. **The RoI warps on stacked levels** (``--parts warps``): the MNC exported as this version
   does (each stage pair's RoI warps one grid sampling on the FPN levels stacked into one map)
   against the same run exported with the level-by-level warps of earlier versions (each
   level's boxes warped alone, the rows gathered back into box order), int8 graphs calibrated
   on the same tiles, per tile paired on each exported backend of ``--backends``, and how far
   their detections are apart on the timed tiles (bench_gpu's ``agreement``: greedy one-to-one
   matching by mask IoU, every detection the graphs keep).
7. **onnxruntime's graph optimisers** (``--parts optimisers``): both models' exports on each
   onnxruntime backend of ``--backends`` whose session leaves an optimiser off
   (``mnc_d2.export.runtime.ORT_DISABLED_OPTIMIZERS``, as tools/predict.py runs it: the int8
   graph without the blocked-layout NchwcTransformer) against the same graph in a session with
   every optimiser on, per tile paired, and the two sessions' detections (``agreement``).

8. **The RoIAlign form of the warps** (``--parts roialign``): the MNC exported with
   ``warp_layout`` "roialign" (each stage pair's warps one RoIAlign, one sample per cell, on
   the stacked map with a zero border: the same samples; the heads in box order) against this
   version's export, per tile paired on each exported backend of ``--backends`` with the two
   exports' detections, and paired against the Mask R-CNN on the same backends.

``--mnc-opts KEY VALUE ...``: inference-only overrides of the MNC (e.g. a cascade shortcut,
``MODEL.MNC.TEST_CASCADE_NMS 0.8``) for parts 2-4, its rows added beside the config's own
(with ``--add-to``); their accuracy is bench_accuracy.py ``--test-opts``'s to measure.
``--input-px N``: both models tested at an N px input instead of their configs' size (e.g. the
tiles' native 650 px for models trained at 416 px, as bench_export.py's 650 px rows) in the
parts whose rows are keyed by the input size (paired, pools, warps, optimisers, roialign), so
such rows join a report's own with ``--add-to``.

Prints one JSON object on stdout (logs go to stderr).

    python -m bench.bench_export_pair \
        --mnc mnc5_native_small_anchors_logdn_copypaste_conv_mask \
        --mask-rcnn mask_rcnn_native_small_anchors_logdn_copypaste \
        --tag 60img_2400it --train-setting hard --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
from pathlib import Path

import numpy as np

from bench.bench_accuracy import check_test_opts, opts_tag
from bench.bench_export import (REPO, TILE, _cfg, _export_int8, _paired_rows,
                                _predict_and_score, _runners, _tiles, detection_counts,
                                graph_flops)
from bench.layout import data_dir, run_dir
from bench.tables import EXPORT_PAIR_BACKENDS

BACKENDS = EXPORT_PAIR_BACKENDS  # the order the tables list them in
logger = logging.getLogger("bench_export_pair")


def test_root(accuracy_work: Path, images: int, setting: str, seed: int = 1) -> Path:
    """bench_accuracy.py's held-out tiles of ``setting``, ``images`` per city, drawn by the
    synthetic generator with ``seed`` (bench_accuracy's ``--test-seed``, 1 by default)."""
    return data_dir(accuracy_work, "test", seed, images, setting) / "spacenet"


def ensure_test_root(accuracy_work: Path, images: int, setting: str, seed: int) -> Path:
    """:func:`test_root`, generated first when missing (bench_accuracy's ``prepare_data``): a
    seed no run was trained, calibrated or tuned on gives tiles none of them has seen."""
    from bench.bench_accuracy import prepare_data

    root = test_root(accuracy_work, images, setting, seed)
    prepare_data(root.parent, seed, images, setting)
    return root


def exporter(train_root: Path, calibration_images: int, warp_layout: str = "stacked",
             formats: tuple[str, ...] = ("onnx", "onnx-int8")):
    """``export(run, out, *opts)``: float ONNX and its int8 graph (``formats``), calibrated on
    ``calibration_images`` tiles of ``train_root`` (the run's own training data), by
    bench_export's ``_export_int8``; an MNC graph with ``warp_layout``."""
    return lambda run, out, *opts: _export_int8(run, out, train_root, *opts,
                                                calibration_images=calibration_images,
                                                warp_layout=warp_layout, formats=formats)


# --openvino-warps roialign: the accuracy part's export, with OpenVINO's own graphs beside
OPENVINO_FORMATS = ("onnx", "onnx-int8", "onnx-openvino", "onnx-int8-openvino")


def model_tiles(paths: list[str], cfg) -> list[np.ndarray]:
    """(H, W, C) float32 model inputs of ``paths`` as tools/predict.py feeds them: the run's
    bands, INPUT.DN_TRANSFORM of their DNs."""
    from mnc_d2.data.bands import input_bands, read_bands
    from mnc_d2.data.radiometry import dn_transform_from_config

    dn = dn_transform_from_config(cfg)
    fill = dn.inverse(cfg.MODEL.PIXEL_MEAN)
    return [dn.forward(read_bands(p, input_bands(cfg), fill)) for p in paths]


def quantised_pools(export: Path, out: Path) -> Path | None:
    """A copy of the export folder ``export`` in ``out`` whose int8 graph has the pooling of
    each of export.json's ``int8.float_pool_inputs`` read its input's quantise / dequantise
    round trip again (mnc_d2.export.quantize.float_pool_inputs undone): the graph as
    onnxruntime's quantiser wrote it, same calibration, every other operator the same. None
    when the export rewired no pooling (a model whose heads' pooling never read a round trip:
    the fully connected mask head's, whose warped features the quantiser leaves float32)."""
    import shutil

    import onnx

    from mnc_d2.inference.scenes import sha256_of

    meta = json.loads((export / "export.json").read_text())
    pools = set(meta.get("int8", {}).get("float_pool_inputs") or [])
    if not pools:
        return None
    model = onnx.load(str(export / "model.int8.onnx"))
    producer = {o: n for n in model.graph.node for o in n.output}
    round_trip = {}  # float32 tensor -> the output of its QuantizeLinear -> DequantizeLinear
    for node in model.graph.node:
        quantised = producer.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if quantised is not None and quantised.op_type == "QuantizeLinear":
            round_trip.setdefault(quantised.input[0], node.output[0])
    for node in model.graph.node:
        if node.name in pools:
            node.input[0] = round_trip[node.input[0]]
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(export, out)
    onnx.save(model, str(out / "model.int8.onnx"))
    meta["sha256"]["model.int8.onnx"] = sha256_of(out / "model.int8.onnx")
    meta["int8"]["float_pool_inputs"] = []
    (out / "export.json").write_text(json.dumps(meta, indent=1))
    return out


def _two_models(models: list, backend: str, tiles, rounds: int, label: str,
                names: tuple[str, str]) -> tuple[dict, list]:
    """Two ExportedModels of ``backend`` paired per tile (bench_export's ``_paired_rows``, rows
    keyed "<label> / <backend>", ``names`` the two models'), and each one's detections on the
    same tiles (for bench_gpu's ``agreement``)."""
    rows = _paired_rows(*_timers(models, backend), [backend], tiles, rounds, label, names)
    return rows, [[m(t) for t in tiles] for m in models]


def _timers(models: list, backend: str) -> list[dict]:
    """Each ExportedModel as _paired_rows times it: {backend: fn(list of tiles)}."""
    return [{backend: (lambda images, m=m: [m(i) for i in images])} for m in models]


def _expect_layout(folder: Path, layout: str) -> None:
    """``folder``'s export.json records ``warp_layout`` ``layout``, or RuntimeError."""
    found = json.loads((folder / "export.json").read_text()).get("warp_layout")
    if found != layout:
        raise RuntimeError(f"{folder}: warp_layout {found!r}, expected {layout!r}")


def warps(run: Path, folders: tuple[Path, Path], backends: list[str], tiles, rounds: int,
          threads: int, label: str, rows: dict, agreement: dict) -> dict:
    """Part 6: the export with stacked-level warps (``folders[0]``) against the one with
    level-by-level warps (``folders[1]``), one backend's two models in memory at a time:
    ``rows`` and ``agreement`` updated with each backend's paired times and the two exports'
    detections on the same tiles (bench_gpu's ``agreement``: the stacked export's as the
    reference, all that the graphs keep), keyed "<label> / <backend>"."""
    from bench.bench_gpu import agreement as same
    from mnc_d2.export.bundle import read_bundle
    from mnc_d2.export.runtime import ExportedModel

    for folder, layout in zip(folders, ("stacked", "levels")):
        _expect_layout(folder, layout)
    for backend in backends:
        models = [ExportedModel(read_bundle(f), backend, threads) for f in folders]
        timed, (stacked, levels) = _two_models(models, backend, tiles, rounds, label,
                                               ("stacked", "levels"))
        rows.update(timed)
        agreement[f"{label} / {backend}"] = same(stacked, levels, 0.0)
        logger.info("%s warps %s / %s: %s", run, label, backend,
                    agreement[f"{label} / {backend}"])
    return {"warps": rows, "warps_agreement": agreement}


def optimisers(folders: dict, backends: list[str], tiles, rounds: int, threads: int,
               label: str) -> tuple[dict, dict]:
    """Part 7: each model's export (``folders``: name -> export folder) on each onnxruntime
    backend that leaves graph optimisers off (mnc_d2.export.runtime.ORT_DISABLED_OPTIMIZERS:
    tools/predict.py's session) against the same graph in a session with every optimiser on,
    paired per tile, one model's two sessions in memory at a time. Returns rows keyed
    "<label> / <name> / <backend>" and the two sessions' detections (bench_gpu's
    ``agreement``, the all-on session's as the reference), keyed the same."""
    from bench.bench_gpu import agreement as same
    from mnc_d2.export.bundle import read_bundle
    from mnc_d2.export.runtime import ORT_DISABLED_OPTIMIZERS, ExportedModel

    rows, agreement = {}, {}
    for backend in [b for b in backends if ORT_DISABLED_OPTIMIZERS.get(b)]:
        for name, folder in folders.items():
            bundle = read_bundle(folder)
            models = [ExportedModel(bundle, backend, threads),
                      ExportedModel(bundle, backend, threads, ort_disabled=())]
            key = f"{label} / {name}"
            timed, (predict, all_on) = _two_models(models, backend, tiles, rounds, key,
                                                   ("predict", "all_optimisers"))
            rows.update(timed)
            agreement[f"{key} / {backend}"] = same(all_on, predict, 0.0)
            logger.info("optimisers %s / %s: %s", key, backend, agreement[f"{key} / {backend}"])
    return rows, agreement


def roialign(folders: dict, backends: list[str], tiles, rounds: int, threads: int,
             label: str) -> dict:
    """Part 8: the MNC exported with the RoIAlign form of the stacked warps (``folders``
    "roialign": ``warp_layout`` "roialign", heads in box order) against this version's export
    ("stacked"), and against the Mask R-CNN ("mask_rcnn"), per tile paired on each exported
    backend of ``backends``, one backend's models in memory at a time. Returns the entry keys
    "roialign" (rows keyed "<label> / <backend>", names "roialign" / "stacked"),
    "roialign_agreement" (the two MNC exports' detections, the stacked one's as the reference)
    and "roialign_paired" (names "mnc" / "mask_rcnn", as the paired part's rows)."""
    from bench.bench_gpu import agreement as same
    from mnc_d2.export.bundle import read_bundle
    from mnc_d2.export.runtime import ExportedModel

    _expect_layout(folders["roialign"], "roialign")
    out = {"roialign": {}, "roialign_agreement": {}, "roialign_paired": {}}
    for backend in backends:
        models = {name: ExportedModel(read_bundle(f), backend, threads)
                  for name, f in folders.items()}
        timed, (alt, stacked) = _two_models([models["roialign"], models["stacked"]], backend,
                                            tiles, rounds, label, ("roialign", "stacked"))
        out["roialign"].update(timed)
        out["roialign_agreement"][f"{label} / {backend}"] = same(stacked, alt, 0.0)
        # times only: the MNC's detections are those just compared
        out["roialign_paired"].update(_paired_rows(
            *_timers([models["roialign"], models["mask_rcnn"]], backend), [backend], tiles,
            rounds, label, ("mnc", "mask_rcnn")))
        logger.info("roialign %s / %s: %s", label, backend, out["roialign"][f"{label} / {backend}"])
    return out


def accuracy(run: Path, export: Path, test_roots: dict, work: Path, threads: int,
             backends=BACKENDS) -> dict:
    """Per test setting: each backend's score of ``run`` (eager) or its export, and the
    difference from eager (``backends`` must include eager, ``torch``)."""
    if "torch" not in backends:
        raise ValueError(f"backends {backends}: the accuracy part compares with eager; add torch")
    from mnc_d2.export.bundle import read_bundle

    bundle = read_bundle(export, check_hashes=False)
    out = {}
    for setting, root in test_roots.items():
        row = {}
        for backend in backends:
            row[backend] = _predict_and_score(run, export, backend, root,
                                              work / "pred" / backend, threads)
            if backend != "torch":  # the graph predict.py ran: its file and its warps
                kind = bundle.graph_kind(backend)
                row[backend].update(graph=bundle.meta["files"][kind],
                                    warp_layout=bundle.warp_layout(kind))
            logger.info("%s %s %s: %s", run, setting, backend, row[backend])
        for backend in [b for b in backends if b != "torch"]:
            row[backend]["f1_minus_eager"] = round(
                row[backend]["mean_city_f1"] - row["torch"]["mean_city_f1"], 4)
        out[setting] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnc", default="mnc5_native_small_anchors_logdn_copypaste_conv_mask",
                        help="bench_accuracy.py variant of the MNC runs")
    parser.add_argument("--mask-rcnn", default="mask_rcnn_native_small_anchors_logdn_copypaste",
                        help="bench_accuracy.py variant of the Mask R-CNN runs")
    parser.add_argument("--tag", default="60img_2400it",
                        help="bench_accuracy.py's run tag (<images>img_<iterations>it)")
    parser.add_argument("--train-setting", default="hard",
                        help="the setting the runs were trained on (bench_accuracy --setting)")
    parser.add_argument("--test-settings", nargs="+", default=["hard", "default"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--speed-tiles", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--test-images", type=int, default=30,
                        help="bench_accuracy.py's test tiles per city (its test_seed1_N folder)")
    parser.add_argument("--test-seed", type=int, default=1,
                        help="the synthetic generator's seed of the test tiles (bench_accuracy's "
                             "--test-seed; generated when missing): another seed re-checks the "
                             "accuracy part on tiles nothing was tuned on")
    parser.add_argument("--calibration-images", type=int, default=32)
    parser.add_argument("--openvino-warps", default="stacked", choices=("stacked", "roialign"),
                        help="the graphs the accuracy part's openvino backends run: this "
                             "version's default export (stacked) or OpenVINO's own graphs "
                             "beside it (roialign: tools/export_model.py --formats "
                             "onnx,onnx-int8,onnx-openvino,onnx-int8-openvino, the folder "
                             "predict.py picks each backend's file from)")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench" / "export_pair")
    parser.add_argument("--accuracy-work", type=Path,
                        default=REPO / ".cache" / "bench" / "accuracy",
                        help="bench_accuracy.py's --work (its runs/ and test tiles)")
    parser.add_argument("--parts", nargs="+",
                        default=["accuracy", "paired", "detections", "flops"],
                        choices=["accuracy", "paired", "detections", "flops", "pools",
                                 "warps", "optimisers", "roialign"])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS,
                        help="the backends of the accuracy and paired parts (eager, torch, "
                             "always among them; detections are counted on onnxruntime)")
    parser.add_argument("--mnc-opts", nargs="+", default=[], metavar="KEY VALUE",
                        help="inference-only config overrides of the MNC (bench_accuracy's "
                             "--test-opts keys, e.g. MODEL.MNC.TEST_CASCADE_NMS 0.8) for the "
                             "paired, detections and flops parts; their rows are added beside "
                             "the config's own (score their accuracy with bench_accuracy.py "
                             "--test-opts)")
    parser.add_argument("--input-px", type=int,
                        help="both models tested at this input size instead of their configs' "
                             "(INPUT.MIN_SIZE_TEST and MAX_SIZE_TEST, inference only; e.g. 650, "
                             "the tiles' native size, as bench_export.py's 650 px rows) in "
                             "the parts whose rows are keyed by it: paired, pools, warps, "
                             "optimisers, roialign")
    parser.add_argument("--add-to", type=Path,
                        help="an earlier report of the same pair: each seed's parts run now "
                             "replace that seed's parts there, the other seeds are kept")
    args = parser.parse_args()
    args.backends = ["torch", *(b for b in BACKENDS if b in args.backends and b != "torch")]
    if "detections" in args.parts and "onnxruntime" not in args.backends:
        parser.error("--parts detections counts detections on onnxruntime: add it to "
                     "--backends or leave detections out of --parts")
    sized = {"accuracy", "detections", "flops"} & set(args.parts)
    if args.input_px is not None and sized:
        parser.error(f"--input-px with --parts {' '.join(sorted(sized))}: those parts measure "
                     "the models at their configs' input size; leave them out of --parts here")
    if args.input_px is not None and args.input_px < 32:
        parser.error(f"--input-px {args.input_px}: give an input size of at least 32 px")
    if args.mnc_opts and "accuracy" in args.parts:
        parser.error("--mnc-opts with --parts accuracy: score the MNC with test options by "
                     "bench_accuracy.py --test-opts; leave accuracy out of --parts here")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    import mnc_d2
    from bench.bench_demo import cpu_model
    from mnc_d2.export.exporter import build_graph

    mnc_d2.setup()
    both = (() if args.input_px is None else  # both models' overrides
            ("INPUT.MIN_SIZE_TEST", str(args.input_px), "INPUT.MAX_SIZE_TEST", str(args.input_px)))
    opts = both + tuple(check_test_opts(args.mnc_opts))
    # the rows of an MNC run with overrides: "650 px, TEST_CASCADE_NMS 0.8 / onnxruntime"
    own = opts[len(both):]  # the MNC's own overrides name its rows; the input size keys them
    label = "".join(f", {k.rsplit('.', 1)[1]} {v}" for k, v in zip(own[0::2], own[1::2]))
    args.work.mkdir(parents=True, exist_ok=True)
    runs = args.accuracy_work / "runs"
    images = int(args.tag.split("img")[0])  # bench_accuracy.py's training tiles per city
    train_root = data_dir(args.accuracy_work, "train", 0, images, args.train_setting)
    export = exporter(train_root, args.calibration_images)
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU",
              "cpu": cpu_model(), "threads": args.threads, "tile_px": TILE,
              "mnc": args.mnc, "mask_rcnn": args.mask_rcnn, "tag": args.tag,
              "train_setting": args.train_setting, "test_seed": args.test_seed,
              "rounds": args.rounds,
              "calibration": f"{args.calibration_images} tiles of each model's own training "
                             "data (generator seed 0), never the benchmark's",
              "seeds": {}}
    if args.add_to:
        earlier = json.loads(args.add_to.read_text())
        earlier.setdefault("test_seed", 1)  # reports from before --test-seed
        mismatch = [k for k in ("mnc", "mask_rcnn", "tag", "train_setting", "test_seed")
                    if earlier.get(k) != report[k]]
        if mismatch:
            raise SystemExit(f"--add-to {args.add_to}: another pair, run tag or test data "
                             f"({', '.join(f'{k} {earlier.get(k)!r}' for k in mismatch)}); "
                             "give the same --mnc, --mask-rcnn, --tag, --train-setting and "
                             "--test-seed")
        report["seeds"] = earlier["seeds"]
    test_roots, home = {}, None  # generated (when missing) once a seed has a trained run
    for seed in args.seeds:
        mnc = run_dir(runs, args.mnc, args.tag, args.train_setting, seed)
        mrcnn = run_dir(runs, args.mask_rcnn, args.tag, args.train_setting, seed)
        if not (mnc / "model_final.pth").is_file():
            logger.warning("no trained model %s (run bench_accuracy.py first)", mnc)
            continue
        if home is None:  # the accuracy part's test sets; every part's speed tiles
            if "accuracy" in args.parts:
                test_roots = {s: ensure_test_root(args.accuracy_work, args.test_images, s,
                                                  args.test_seed) for s in args.test_settings}
            home = ensure_test_root(args.accuracy_work, args.test_images, args.train_setting,
                                    args.test_seed)
        entry = report["seeds"].setdefault(str(seed), {})
        entry.update(mnc_run=str(mnc.relative_to(runs)), mask_rcnn_run=str(mrcnn.relative_to(runs)))
        # the MNC's export (with --mnc-opts, their own; the accuracy part has none), and the
        # Mask R-CNN's
        mnc_folder = args.work / f"{args.mnc}_{args.tag}_seed{seed}{opts_tag(opts)}"
        mrcnn_folder = args.work / f"{args.mask_rcnn}_{args.tag}_seed{seed}{opts_tag(both)}"
        if "accuracy" in args.parts:
            mnc_export = (export(mnc, mnc_folder) if args.openvino_warps == "stacked" else
                          exporter(train_root, args.calibration_images, formats=OPENVINO_FORMATS)(
                              mnc, args.work / f"{mnc_folder.name}_openvino_graphs"))
            # with --add-to, the backends scored now join (or replace) the earlier ones
            for setting, rows in accuracy(mnc, mnc_export, test_roots, args.work, args.threads,
                                          args.backends).items():
                entry.setdefault("accuracy", {}).setdefault(setting, {}).update(rows)
        cfg = _cfg(mnc, *opts)
        px = int(cfg.INPUT.MIN_SIZE_TEST)  # the rows' input size
        if not both:
            entry["input_px"] = px  # the config's (the flops table's)
        tiles = model_tiles(_tiles(home)[: args.speed_tiles], cfg)
        int8 = [b for b in args.backends if b.endswith("-int8")]
        if "pools" in args.parts and int8:
            from mnc_d2.export.bundle import read_bundle
            from mnc_d2.export.runtime import ExportedModel

            folder = export(mnc, mnc_folder, *opts)
            other = quantised_pools(folder, args.work / f"{folder.name}_quantised_pools")
            if other is None:
                logger.warning("%s: the int8 graph's head pooling reads no round trip (nothing "
                               "rewired at export): no pools rows for seed %d", folder, seed)
            else:
                timed = [{b: (lambda images, m=ExportedModel(read_bundle(f), b, args.threads):
                              [m(i) for i in images]) for b in int8} for f in (folder, other)]
                entry.setdefault("pools", {}).update(_paired_rows(
                    timed[0], timed[1], int8, tiles, args.rounds,
                    f"{px} px{label}", ("float_pools", "quantised_pools")))
        exported = [b for b in args.backends if b != "torch"]
        if "warps" in args.parts and exported:
            entry.update(warps(mnc, (export(mnc, mnc_folder, *opts), exporter(
                train_root, args.calibration_images, "levels")(
                mnc, args.work / f"{mnc_folder.name}_level_warps", *opts)), exported, tiles,
                args.rounds, args.threads, f"{px} px{label}",
                entry.get("warps", {}), entry.get("warps_agreement", {})))
        if not (mrcnn / "model_final.pth").is_file():
            logger.warning("no trained Mask R-CNN %s: no paired rows for seed %d", mrcnn, seed)
            continue
        x = torch.from_numpy(tiles[0].transpose(2, 0, 1).copy())[None]
        mrcnn_cfg = _cfg(mrcnn, *both)
        reads = [(list(c.INPUT.BANDS), c.INPUT.get("DN_TRANSFORM", "")) for c in (cfg, mrcnn_cfg)]
        if reads[0] != reads[1]:  # both are timed on the same input arrays
            raise SystemExit(f"{mnc} reads bands and INPUT.DN_TRANSFORM {reads[0]}, {mrcnn} "
                             f"{reads[1]}: pair models that read the same input")
        if "flops" in args.parts:
            entry.setdefault("flops", {}).update(
                {name: graph_flops(build_graph(c, TILE), x)
                 for name, c in ((f"mnc{label}", cfg), ("mask_rcnn", mrcnn_cfg))})
        if "optimisers" in args.parts:
            rows, agreement = optimisers(
                {"mnc": export(mnc, mnc_folder, *opts),
                 "mask_rcnn": export(mrcnn, mrcnn_folder, *both)},
                args.backends, tiles, args.rounds, args.threads, f"{px} px{label}")
            entry.setdefault("optimisers", {}).update(rows)
            entry.setdefault("optimisers_agreement", {}).update(agreement)
        if "roialign" in args.parts and exported:
            folders = {"roialign": exporter(train_root, args.calibration_images, "roialign")(
                           mnc, args.work / f"{mnc_folder.name}_roialign_warps", *opts),
                       "stacked": export(mnc, mnc_folder, *opts),
                       "mask_rcnn": export(mrcnn, mrcnn_folder, *both)}
            for key, rows in roialign(folders, exported, tiles, args.rounds, args.threads,
                                      f"{px} px{label}").items():
                entry.setdefault(key, {}).update(rows)
        wanted = [p for p in ("paired", "detections") if p in args.parts]
        if not wanted:
            continue
        pair = [_runners(run, folder, run_opts, args.backends, args.threads, export)
                for run, folder, run_opts in ((mnc, mnc_folder, opts),
                                              (mrcnn, mrcnn_folder, both))]
        if "detections" in args.parts:
            # on onnxruntime: all kept, and at the polygon threshold
            entry.setdefault("detections_per_tile", {}).update({
                name: detection_counts(r["onnxruntime"](tiles), c.TEST.SPACENET.SCORE_THRESH)
                for name, r, c in ((f"mnc{label}", pair[0], cfg),
                                   ("mask_rcnn", pair[1], mrcnn_cfg))})
        if "paired" in args.parts:
            entry.setdefault("paired", {}).update(_paired_rows(
                pair[0], pair[1], args.backends, tiles, args.rounds,
                f"{px} px{label}"))
    report["seeds"] = dict(sorted(report["seeds"].items(), key=lambda kv: int(kv[0])))
    ratios = {}
    for entry in report["seeds"].values():
        for key, row in entry.get("paired", {}).items():
            ratios.setdefault(key, []).append(row["median"])
    report["paired_median_over_seeds"] = {
        key: {"median": round(statistics.median(v), 3), "min": min(v), "max": max(v),
              "seeds": len(v)} for key, v in ratios.items()}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
