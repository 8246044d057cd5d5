"""``tools/export_model.py``: a trained run -> an exported folder (:mod:`.bundle`).

The graph (:class:`.graph.MNCExportGraph`) is traced once on a synthetic tile (band means plus
noise of the band spread, fixed seed: no data is needed and nothing about the tile's content is
frozen into the graph, which has no data-dependent branch), written as ONNX (opset 17, the
TorchScript-based exporter) and/or TorchScript, then run once by every runtime installed here
and compared with PyTorch on that tile; the differences are recorded in ``export.json``.

A trace keeps the device it ran on as constants, so the TorchScript graph is traced on the
device it will run on (``device``, tools/export_model.py ``--device``; recorded as
``torchscript_device``, where :class:`.runtime.ExportedModel` runs it). The ONNX graph is always
exported from the CPU model: its runtimes here run on the CPU.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..data.radiometry import dn_transform_from_config, training_spread
from ..utils.atomic import plain_mode
from .bundle import (BACKEND_FILES, EXPORT_FILE, FORMAT, FORMAT_VERSION, MODEL_FILES,
                     OPENVINO_WARP_LAYOUT, ExportError, read_bundle)
from .graph import MaskRCNNExportGraph, MNCExportGraph

logger = logging.getLogger(__name__)

OPSET = 17
# The export's check pairs a runtime's detection with PyTorch's when their boxes differ by at
# most this many pixels in every coordinate (float32 differences are ~1e-5 px).
MATCH_PX = 1.0
# The int8 graphs and the float graph each one quantises.
INT8_SOURCES = {"onnx-int8": "onnx", "onnx-int8-openvino": "onnx-openvino"}


def _sample(cfg, height: int, width: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    mean = np.asarray(cfg.MODEL.PIXEL_MEAN, np.float32)[:, None, None]
    std = np.asarray(cfg.MODEL.PIXEL_STD, np.float32)[:, None, None]
    noise = rng.standard_normal((len(mean), height, width)).astype(np.float32)
    return torch.from_numpy(mean + std * noise)[None]


def graph_code_sha256() -> str:
    """SHA-256 over the source files that define what an export contains (the export graph,
    the exporter and quantiser, the model code they trace), in a fixed order: recorded in
    ``export.json`` so that an export says which code wrote it, and a cached export made by
    other code is not mistaken for a current one (bench_export.py)."""
    import hashlib

    package = Path(__file__).resolve().parents[1]
    files = sorted([*(package / "export").glob("*.py"), *(package / "modeling").glob("*.py")])
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def build_graph(cfg, tile_size: int, device: str = "cpu",
                warp_layout: str = "stacked") -> MNCExportGraph:
    """The trained model of ``cfg`` (MODEL.WEIGHTS loaded) wrapped for export, on ``device``;
    ``warp_layout``: how an MNC graph's RoI warps read the FPN levels (:class:`MNCExportGraph`;
    "levels" is the earlier form, kept to measure the difference)."""
    from detectron2.modeling import build_model
    from detectron2.modeling.roi_heads import StandardROIHeads

    from ..inference.input_size import tile_scale
    from ..modeling.checkpoint import load_trained_weights

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = device
    model = build_model(cfg).eval()
    load_trained_weights(cfg, model, cfg.MODEL.WEIGHTS)
    graph = MaskRCNNExportGraph if type(model.roi_heads) is StandardROIHeads else MNCExportGraph
    return graph(model, tile_size, tile_size, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST,
                 tile_scale(cfg, tile_size), warp_layout=warp_layout).eval()


def _layout(graph: MNCExportGraph) -> str | None:
    """What export.json records of ``graph``'s RoI warps (None: a Mask R-CNN, which has none)."""
    return None if isinstance(graph, MaskRCNNExportGraph) else graph.warp_layout


def _openvino_graph(cfg, tile_size: int, graph: MNCExportGraph) -> MNCExportGraph:
    """The graph of the OpenVINO files (``onnx-openvino``): ``graph`` itself when it already
    has their layout, or no warps to lay out (a Mask R-CNN, or a model with MODEL.MNC.ROI_WARP
    roialign, whose graph warps level by level in any case); otherwise the model again with
    :data:`OPENVINO_WARP_LAYOUT`."""
    if _layout(graph) in (None, OPENVINO_WARP_LAYOUT) or \
            graph.model.roi_heads.warp.mode != "warp":
        return graph
    return build_graph(cfg, tile_size, warp_layout=OPENVINO_WARP_LAYOUT)


def check_replaceable(out_dir: Path) -> None:
    """``out_dir`` may be replaced by an export: absent, an empty folder, or an earlier export
    (its export.json and only the files an export writes). Anything else, e.g. the training
    run's folder given by mistake, is an ExportError naming what it holds, not deleted."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ExportError(f"--output {out_dir} is a file; give a folder for the export")
    names = {p.name for p in out_dir.iterdir()}
    ours = {EXPORT_FILE, "config.yaml", *MODEL_FILES.values()}
    if names and (EXPORT_FILE not in names or not names <= ours):
        shown = ", ".join(sorted(names - ours)[:5] or sorted(names)[:5])
        raise ExportError(f"--output {out_dir} exists and is not an earlier export (it holds "
                          f"{shown}{', ...' if len(names) > 5 else ''}); an export replaces "
                          "its folder whole, so give a new or empty folder")


def check_trace_device(device: str, formats) -> str:
    """``device`` for the TorchScript trace, checked before anything is built: a name torch
    knows, available on this machine, and only with the torchscript format. Returns its full
    name ("cuda" -> "cuda:0", the device the trace's constants will name)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ExportError(f"--device {device}: not a torch device; give cpu or cuda[:N]") \
            from None
    if parsed.type == "cpu":
        return "cpu"
    if "torchscript" not in formats:
        raise ExportError(f"--device {device}: only the TorchScript graph is traced on another "
                          "device (the ONNX runtimes here run on the CPU); add torchscript to "
                          "--formats, or leave --device cpu")
    if parsed.type != "cuda":
        raise ExportError(f"--device {device}: the TorchScript trace runs on cpu or cuda")
    if not torch.cuda.is_available():
        raise ExportError(f"--device {device}: this machine has no CUDA device "
                          "(torch.cuda.is_available() is False); export on the GPU machine "
                          "that will run the model, or leave --device cpu")
    index = 0 if parsed.index is None else parsed.index
    if index >= torch.cuda.device_count():
        raise ExportError(f"--device {device}: this machine has {torch.cuda.device_count()} "
                          "CUDA device(s)")
    return f"cuda:{index}"


def export_model(cfg, out_dir: str | Path, formats=("onnx", "torchscript"), tile_size: int = 650,
                 score_thresh: float | None = None, calibration: list[str] | None = None,
                 calibration_images: int = 32, device: str = "cpu",
                 check_images: list[str] | None = None, warp_layout: str = "stacked") -> Path:
    """Export the run of ``cfg`` into ``out_dir`` (replaced only when the export succeeds, and
    only when it is empty or an earlier export: :func:`check_replaceable`).
    ``formats``: graph file kinds (:data:`.bundle.MODEL_FILES`); ``onnx-int8`` adds the int8
    graph (:mod:`.quantize`), calibrated on ``calibration_images`` training tiles (or the
    files/globs of ``calibration``); ``onnx-openvino`` and ``onnx-int8-openvino`` the float and
    int8 graphs in OpenVINO's form (:data:`.bundle.OPENVINO_WARP_LAYOUT`, whatever
    ``warp_layout``), which backends openvino and openvino-int8 then run.
    ``device``: where the TorchScript graph is traced, hence where it runs
    (:func:`check_trace_device`); the reference outputs and the ONNX graph come from the CPU.
    ``check_images``: GeoTIFFs (files or globs) whose top-left tiles the export's own check
    runs too, beside the synthetic trace tile (noise, on which a trained model usually finds
    nothing, so alone it shows that each runtime runs, not that it finds what PyTorch finds).
    ``warp_layout``: :func:`build_graph`'s, of the onnx, onnx-int8 and torchscript graphs
    (recorded in export.json with each file's)."""
    from ..data.bands import input_bands
    from ..inference.threshold import resolve_score_threshold
    from ..inference.scenes import sha256_of

    unknown = [f for f in formats if f not in MODEL_FILES]
    if unknown or not formats:
        raise ExportError(f"--formats {','.join(formats)}: choose from {', '.join(MODEL_FILES)}")
    if cfg.TEST.AUG.ENABLED:
        raise ExportError("TEST.AUG.ENABLED True: an exported graph runs one pass per tile "
                          "(test-time augmentation runs with --backend torch); export with "
                          "TEST.AUG.ENABLED False")
    out_dir = Path(out_dir)
    check_replaceable(out_dir)  # before the (slow) trace
    device = check_trace_device(device, formats)
    dn = dn_transform_from_config(cfg)  # what the DNs become before the graph
    if set(formats) & set(INT8_SOURCES):  # before the (slow) trace: a missing dataset fails
        from .quantize import calibration_files

        calibration = calibration_files(cfg, calibration_images, calibration)
    real = {}
    if check_images:  # before the (slow) trace: a missing file fails at once
        from .quantize import calibration_tiles, image_files

        files = image_files(check_images, "--check-images")
        real = dict(zip(files, calibration_tiles(files, input_bands(cfg),
                                                 list(cfg.MODEL.PIXEL_MEAN), tile_size, dn)))
    graph = build_graph(cfg, tile_size, warp_layout=warp_layout)
    sample = _sample(cfg, tile_size, tile_size)
    checked = {"trace tile (synthetic)": sample.numpy(), **real}
    with torch.no_grad():
        references = {name: [t.numpy() for t in graph(torch.from_numpy(tile))]
                      for name, tile in checked.items()}
    # the ONNX graphs to write: each float kind, and the float kind each int8 one comes from
    floats = {INT8_SOURCES.get(k, k) for k in formats if k != "torchscript"}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        files, layouts = {}, {}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings: the graph has no data branches
            if "torchscript" in formats:
                on = graph if device == "cpu" else build_graph(cfg, tile_size, device,
                                                               warp_layout)
                traced = torch.jit.trace(on, (sample.to(device),), check_trace=False)
                traced.save(str(work / MODEL_FILES["torchscript"]))
                del on, traced
                files["torchscript"] = MODEL_FILES["torchscript"]
                layouts["torchscript"] = _layout(graph)
            for kind in sorted(floats):  # "onnx" first
                ours = graph if kind == "onnx" else _openvino_graph(cfg, tile_size, graph)
                torch.onnx.export(ours, (sample,), str(work / MODEL_FILES[kind]),
                                  input_names=["image"],
                                  output_names=["boxes", "scores", "classes", "masks"],
                                  opset_version=OPSET, dynamo=False)
                files[kind], layouts[kind] = MODEL_FILES[kind], _layout(ours)
        int8 = {}
        quantised = [k for k in INT8_SOURCES if k in formats]
        if quantised:
            from .quantize import calibration_name, calibration_tiles, quantize_onnx

            tiles = calibration_tiles(calibration, input_bands(cfg), list(cfg.MODEL.PIXEL_MEAN),
                                      tile_size, dn)
            for kind in quantised:
                source = INT8_SOURCES[kind]
                int8[kind] = quantize_onnx(work / MODEL_FILES[source], work / MODEL_FILES[kind],
                                           tiles)
                int8[kind]["calibration_files"] = [calibration_name(f) for f in calibration]
                files[kind], layouts[kind] = MODEL_FILES[kind], layouts[source]
            for kind in floats - set(formats):  # only the int8 graph was asked for
                (work / MODEL_FILES[kind]).unlink()
                del files[kind], layouts[kind]
        sn = cfg.TEST.SPACENET
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "mnc_d2_version": __version__,
            "torch_version": torch.__version__,
            "onnx_opset": OPSET if set(files) - {"torchscript"} else None,
            "torchscript_device": device if "torchscript" in files else None,
            # how the MNC graph's RoI warps read the FPN levels (MNCExportGraph): the
            # --warp-layout graphs', and each file's (OpenVINO's files: "roialign")
            "warp_layout": _layout(graph), "warp_layouts": layouts,
            "files": files, "sha256": {name: sha256_of(work / name) for name in files.values()},
            "input": {"tile_height": tile_size, "tile_width": tile_size,
                      "channels": len(cfg.MODEL.PIXEL_MEAN), "bands": input_bands(cfg),
                      "band_names": [str(n) for n in cfg.INPUT.BAND_NAMES],
                      "pixel_mean": [float(v) for v in cfg.MODEL.PIXEL_MEAN],
                      "pixel_std": [float(v) for v in cfg.MODEL.PIXEL_STD],
                      "data_std": training_spread(cfg),  # predict.py --match-radiometry
                      "dn_transform": dn.kind,
                      "gsd": float(cfg.INPUT.GSD) or None,
                      "resized": list(graph.resized), "padded": list(graph.padded)},
            "outputs": {"boxes": "(R, 4) x0 y0 x1 y1 tile pixels", "scores": "(R,)",
                        "classes": "(R,) int64",
                        "masks": "(R, M, M) soft masks on their boxes, 0.5 = the mask "
                                 "threshold (pasted by mnc_d2.export.runtime.paste_masks)"},
            "score_thresh": resolve_score_threshold(cfg, score_thresh),
            "post": {"simplify_tolerance": sn.SIMPLIFY_TOLERANCE, "regularize": sn.REGULARIZE,
                     "min_edge": sn.REGULARIZE_MIN_EDGE, "align_deg": sn.ALIGN_NEIGHBOURS,
                     "align_gap": sn.ALIGN_NEIGHBOURS_GAP},
            "source": {"weights": str(cfg.MODEL.WEIGHTS),
                       "weights_sha256": sha256_of(cfg.MODEL.WEIGHTS),
                       "graph_code_sha256": graph_code_sha256()},
            "config": cfg.dump(),
        }
        if int8:  # the int8 graph's quantisation (onnx-int8's, else OpenVINO's)
            meta["int8"] = int8.get("onnx-int8") or int8["onnx-int8-openvino"]
            if "onnx-int8-openvino" in int8:
                meta["int8_openvino"] = int8["onnx-int8-openvino"]
        (work / "config.yaml").write_text(meta["config"])
        (work / EXPORT_FILE).write_text(json.dumps(meta, indent=1))
        meta["check"] = _check(work, checked, references)
        (work / EXPORT_FILE).write_text(json.dumps(meta, indent=1))
        work.chmod(plain_mode(directory=True))  # mkdtemp's folder is private; the export not
        if out_dir.exists():
            check_replaceable(out_dir)  # (still) an earlier export or an empty folder
            shutil.rmtree(out_dir)
        work.rename(out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    logger.info("exported %s to %s (%s)", cfg.MODEL.WEIGHTS, out_dir, ", ".join(files))
    return out_dir


def _check(folder: Path, tiles: dict[str, np.ndarray], references: dict[str, list]) -> dict:
    """Each installed runtime on ``tiles`` (name -> (1, C, H, W) graph input) against PyTorch's
    ``references``: detections summed over the tiles, the largest score and box differences of
    the detections paired with PyTorch's and the number left unpaired (:func:`_differences`),
    per tile too; or why the runtime could not run."""
    from .runtime import ExportedModel

    bundle = read_bundle(folder)
    counts = {name: int(len(ref[1])) for name, ref in references.items()}
    out = {"tiles": list(tiles), "torch_detections": sum(counts.values()),
           "torch_detections_per_tile": counts}
    for backend in BACKEND_FILES:  # every runtime whose graph this export has
        try:
            graph = bundle.graph_path(backend).name
        except ExportError:  # no graph this backend runs
            continue
        try:
            model = ExportedModel(bundle, backend)
        except ExportError as exc:
            out[backend] = {"skipped": str(exc)}
            continue
        per_tile = {}
        for name, tile in tiles.items():
            raw = model._call(np.ascontiguousarray(tile))  # the graph's own input
            per_tile[name] = {"detections": int(len(raw[1])),
                              **_differences(raw, references[name])}
        out[backend] = {"graph": graph,
                        "detections": sum(t["detections"] for t in per_tile.values()),
                        "unmatched": sum(t["unmatched"] for t in per_tile.values())}
        for key in ("max_score_diff", "max_box_diff_px"):
            values = [t[key] for t in per_tile.values() if t[key] is not None]
            out[backend][key] = max(values) if values else None
        out[backend]["per_tile"] = per_tile
        logger.info("check %s: %s", backend, {k: v for k, v in out[backend].items()
                                               if k != "per_tile"})
    if not out["torch_detections"]:
        logger.warning("the export's check found no detection on its %s (PyTorch's outputs "
                       "too), so it shows that each runtime runs, not that it finds the same "
                       "buildings; pass --check-images 'PATH/*.tif' (tiles with buildings) "
                       "to compare on real imagery", "tiles" if len(tiles) > 1 else "tile")
    return out


def _differences(raw: list, reference: list, match_px: float = MATCH_PX) -> dict:
    """A runtime's detections ``raw`` against PyTorch's ``reference`` (boxes, scores, ...):
    each reference detection paired with the raw detection whose box is nearest (largest
    coordinate difference; the order of detections with near-equal scores may differ), a pair
    farther apart than ``match_px`` left unmatched. Returns the largest score and box
    differences over the pairs (None when there is none) and ``unmatched``: reference
    detections without a pair plus raw detections paired with none. Not always 0 for a
    faithful graph: float32 sums in another order (~1e-6) can flip a decision taken at a near
    tie (a mask pixel at the threshold moving a voted box, which then changes what NMS after
    voting keeps), mostly with barely trained models whose masks sit near 0.5 everywhere."""
    boxes, ref_boxes = np.asarray(raw[0]).reshape(-1, 4), np.asarray(reference[0]).reshape(-1, 4)
    if not len(boxes) or not len(ref_boxes):
        none = not len(boxes) and not len(ref_boxes)
        return {"max_score_diff": 0.0 if none else None, "max_box_diff_px": 0.0 if none else None,
                "unmatched": len(boxes) + len(ref_boxes)}
    gap = np.abs(ref_boxes[:, None, :] - boxes[None, :, :]).max(axis=2)  # (N_ref, N_raw)
    nearest, closest = gap.argmin(axis=1), gap.min(axis=1)
    paired = closest <= match_px
    unmatched = int((~paired).sum()) + len(boxes) - len(np.unique(nearest[paired]))
    if not paired.any():
        return {"max_score_diff": None, "max_box_diff_px": None, "unmatched": unmatched}
    score_diff = np.abs(np.asarray(raw[1])[nearest] - np.asarray(reference[1]))[paired]
    return {"max_score_diff": float(score_diff.max()),
            "max_box_diff_px": float(closest[paired].max()), "unmatched": unmatched}
