"""INT8 post-training quantisation of the exported ONNX graph (``--formats onnx-int8``).

What is quantised: the convolutions (backbone, FPN, RPN; 80-90% of the FLOPs of the benchmark
models) and the fully connected layers (``Gemm``: the MNC stages' classifiers, box regressors
and mask layers), statically, with onnxruntime's quantiser in QDQ form: int8 weights per output
channel, uint8 activations whose ranges come from calibration tiles run through the float graph
(cut at the 99.999th percentile of each activation's absolute values, onnxruntime's histogram
calibrator, one tile at a time). Everything else stays float32: RoI warping, NMS, mask voting
(its one-hot sums are ``MatMul``, deliberately not quantised), the masks' sigmoid and MNC's
classification heads' 2 x 2 max pooling of the warped features (:func:`float_pool_inputs`).
onnxruntime runs the quantised layers with integer kernels (VNNI where the CPU has it). With
only the convolutions quantised the fully connected layers took a fifth of the quantised graph's
time on the benchmark model, at the same F1 (measured on one model).

The heads' output layers stay float32 (:data:`FLOAT_LAYERS`: the RPN's objectness and anchor
deltas, the classifiers' scores, the box regressors, the mask predictors): they are small (under
1% of the FLOPs) and their outputs are what the detections are made of. This recipe (output
layers float, percentile ranges) was chosen among five by how closely the int8 graph follows
the float graph on training tiles the calibration did not use (no test data): over six
benchmark models it changed the fewest detections and moved boxes least, ahead of min-max
ranges, quantising every layer, and the convolutions alone (``bench/bench_export.py --parts
int8_recipes``, BENCHMARKS.md section 8b).

Calibration tiles are real imagery the model was trained on: by default images evenly spaced
over the run's ``DATASETS.TRAIN``, or the GeoTIFFs a caller names; each is read like a
prediction tile (the run's bands, nodata filled with the band means) and its top-left window cut
or padded to the exported tile. Never the test data: the quantised model's
accuracy is measured on tiles its calibration has not seen.

This is an approximation of the float model, not the same model: scores and masks move (the
export records the largest score difference on its check tile; the benchmark reports the F1 and
the buildings that change).
"""

from __future__ import annotations

import contextlib
import glob
import io
import logging
import re
import tempfile
from pathlib import Path

import numpy as np

from .bundle import ExportError

logger = logging.getLogger(__name__)

QUANTIZED_OPS = ("Conv", "Gemm")
# Layers kept float32 (module docstring), matched on the exported operators' names
# (``/rpn/rpn_head/anchor_deltas_2/Conv``, ``/stages_4_5/cls_heads.0/cls_score/Gemm``,
# ``/mask_head/predictor/Conv``): the last module of the name.
FLOAT_LAYERS = re.compile(r"/(objectness_logits|anchor_deltas)(_\d+)?/|/(cls_score|bbox_pred|"
                          r"predictor)/")

# 2 x 2 max pooling that reads the float32 tensor behind its input's QuantizeLinear /
# DequantizeLinear pair (:func:`float_pool_inputs`): MNC's classification heads' pooling of the
# warped features (``/stages_2_3/cls_heads.0/MaxPool_1``).
FLOAT_POOLS = re.compile(r"/cls_heads\.\d+/MaxPool(_\d+)?$")

# quantize_onnx's calibrations: onnxruntime's CalibrationMethod, its extra options, and how
# export.json names it.
CALIBRATIONS = {"minmax": ("MinMax", {}, "min-max"),
                "percentile": ("Percentile", {"CalibPercentile": 99.999},
                               "99.999th percentile of absolute values")}

# Graph parts that run on the kept detections, by the exported operators' name prefix
# (mnc_d2.export.graph.PARTS): their activations are empty on a tile without detections.
ON_DETECTIONS = ("/mask_head/",)


def float_layers(model_path: Path) -> list[str]:
    """The names of the quantisable operators of ``model_path`` that stay float32."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [n.name for n in graph.node
            if n.op_type in (*QUANTIZED_OPS, "ConvTranspose") and FLOAT_LAYERS.search(n.name)]


def image_files(paths: list[str], option: str) -> list[str]:
    """The files of ``paths`` (files or glob patterns), sorted, each checked to exist; a
    pattern matching nothing or a missing file is an ExportError naming ``option``."""
    files = sorted({f for p in paths for f in (glob.glob(p) or [p])})
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise ExportError(f"{option}: {missing[0]} is not a file")
    return files


def calibration_files(cfg, count: int, paths: list[str] | None = None) -> list:
    """``count`` images for calibration: from ``paths`` (files or glob patterns) when given,
    else evenly spaced over the run's training datasets (``cfg.DATASETS.TRAIN``). Each is a
    path, or (path, (column, row, width, height)) for an image that is a window of a scene
    (own scenes, DATASETS.GEO: each window its own image, not the scene's top-left corner
    once per window)."""
    if count < 1:
        raise ExportError(f"--calibration-images {count}: quantisation needs at least one tile")
    if paths:
        files = image_files(paths, "--calibration")
    else:
        from detectron2.data import DatasetCatalog

        from ..data.bands import dataset_image

        geo, own = _register_own_scenes(cfg)
        files = []
        for name in cfg.DATASETS.TRAIN:
            try:
                files += [dataset_image(d) for d in DatasetCatalog.get(name)]
            except (KeyError, FileNotFoundError, OSError, ValueError) as exc:
                why = "not registered" if isinstance(exc, KeyError) else str(exc)
                where = (f"its scenes and footprints, listed in DATASETS.GEO {geo}"
                         if name in own else "DETECTRON2_DATASETS, the data root")
                raise ExportError(
                    f"int8 calibration reads training tiles of DATASETS.TRAIN {name!r}, which "
                    f"is not readable here ({why}); make {where}, readable here, or pass "
                    "--calibration 'PATH/*.tif'") from None
    if not files:
        raise ExportError("int8 calibration found no image (DATASETS.TRAIN is empty and no "
                          "--calibration was given)")
    files = list(dict.fromkeys(files))  # a file listed by two datasets: once
    step = max(1, len(files) // count)
    return files[::step][:count]


def _register_own_scenes(cfg) -> tuple[str, tuple]:
    """Register the run's own-scene datasets (DATASETS.GEO), which export skips at set-up
    (an exported model needs no dataset) but int8 calibration reads: (DATASETS.GEO, the names
    it registered). An unreadable file is an error naming it and the way around it."""
    if not cfg.DATASETS.GEO:
        return "", ()
    from ..data.geo_dataset import register_geo_file

    try:
        return cfg.DATASETS.GEO, tuple(register_geo_file(cfg.DATASETS.GEO))
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise ExportError(f"int8 calibration reads the run's training windows, from DATASETS.GEO "
                          f"{cfg.DATASETS.GEO}, which cannot be read here ({exc}); pass "
                          "--calibration 'PATH/*.tif'") from None


def calibration_name(item) -> str:
    """How export.json records one calibration image of :func:`calibration_files` (a URL
    without its query string's token)."""
    from ..inference.sources import redact

    if isinstance(item, tuple):
        path, (col, row, width, height) = item
        return f"{redact(str(path))} (window {col} {row} {width} {height})"
    return redact(str(item))


def calibration_tiles(files: list, bands: list[int], fill: list[float],
                      tile: int, transform=None) -> list[np.ndarray]:
    """(1, C, tile, tile) float32 inputs of the exported graph, one per image of ``files``
    (:func:`calibration_files`): a path's top-left window, or the window given with it
    (padded with the band means where the image is smaller). ``fill``: PIXEL_MEAN;
    ``transform``: the run's :class:`~mnc_d2.data.radiometry.DNTransform` (None: none)."""
    import rasterio
    from rasterio.windows import Window

    from ..data.bands import image_source, read_bands
    from ..data.radiometry import dn_transform
    from .runtime import graph_input

    dn = transform or dn_transform("")
    out = []
    for item in files:
        path, window = image_source(item)
        with rasterio.open(path) as src:
            window = window or Window(0, 0, src.width, src.height)
            window = Window(window.col_off, window.row_off, min(tile, window.width),
                            min(tile, window.height))
            image = read_bands(src, bands, dn.inverse(fill), window)
        out.append(graph_input(dn.forward(image), (tile, tile),
                               np.asarray(fill, dtype=np.float32)))
    return out


def quantize_onnx(src: Path, dst: Path, tiles: list[np.ndarray], input_name: str = "image",
                  keep_outputs_float: bool = True, ops: tuple[str, ...] = QUANTIZED_OPS,
                  calibration: str = "percentile") -> dict:
    """Write the statically quantised ``src`` graph to ``dst``; returns what was done (for
    export.json). The defaults are the export's recipe; the others are what it was chosen
    against (``bench/bench_export.py --parts int8_recipes``): ``keep_outputs_float`` False
    quantises every layer of ``ops``, ``ops`` ("Conv",) leaves the fully connected layers
    float, ``calibration`` "minmax" takes each activation's range from its smallest and largest
    calibration value where "percentile" cuts it at the 99.999th percentile of its absolute
    values (onnxruntime's histogram calibrator, symmetric, then cut to the values seen: a ReLU
    output keeps 0 as its low end). mnc_d2 0.2.0's first int8 exports were
    ``keep_outputs_float=False, calibration="minmax"``.

    The calibrator sees one tile at a time (bounded memory). A graph with quantised layers that
    run on the kept detections (:data:`ON_DETECTIONS`: Mask R-CNN's mask head) calibrates with
    "percentile" on the tiles where the float graph keeps at least one detection (all of them
    when it keeps none on any): on a tile without any those layers have empty activations,
    which onnxruntime's histogram merge cannot take. MNC's stages run on the proposals, never
    empty, and calibrate on every tile."""
    if calibration not in CALIBRATIONS:
        raise ExportError(f"int8 calibration {calibration!r}: use one of "
                          f"{', '.join(CALIBRATIONS)}")
    method, extra, name = CALIBRATIONS[calibration]
    given = len(tiles)
    if calibration == "percentile" and _runs_on_detections(src, ops):
        tiles = _tiles_with_detections(src, tiles, input_name) or tiles
    try:
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod,
                                              QuantFormat, QuantType, quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise ExportError("--formats onnx-int8 needs onnxruntime's quantiser: pip install "
                          "onnxruntime") from None

    class Reader(CalibrationDataReader):
        """The tiles, handed to the calibrator one range at a time (``set_range``), so that it
        holds one tile's activations, not all of them (the percentile calibrator keeps every
        activation it is given until it histograms them: ~1.6 GB a 650 px tile on R-50)."""

        def __init__(self):
            self.set_range(0, len(tiles))

        def __len__(self):
            return len(tiles)

        def set_range(self, start_index: int, end_index: int):
            self._feeds = iter([{input_name: t} for t in tiles[start_index:end_index]])

        def get_next(self):
            return next(self._feeds, None)

    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # folds constants and infers shapes so the quantiser sees every Conv's input ranges
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        kept = float_layers(prepared) if keep_outputs_float else []
        # one tile per calibration step (onnxruntime's "strided" calibration: despite its
        # name it steps any calibrator); the histograms of the steps are merged
        options = {**extra, "CalibStridedMinMax": 1}
        chatter = io.StringIO()  # the histogram calibrator prints its progress to stdout
        try:
            with contextlib.redirect_stdout(chatter):
                quantize_static(str(prepared), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                                per_channel=True, op_types_to_quantize=list(ops),
                                nodes_to_exclude=kept, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8,
                                calibrate_method=getattr(CalibrationMethod, method),
                                extra_options=options)
        except ValueError as exc:  # the histogram merge on empty activations (docstring)
            raise ExportError(
                f"int8 calibration failed in onnxruntime's calibrator ({exc}): the model "
                f"detects nothing on the {given} calibration tile(s); pass --calibration "
                "'PATH/*.tif' with tiles that show buildings") from None
        if chatter.getvalue().strip():
            logger.debug("onnxruntime's quantiser: %s", chatter.getvalue().strip())
        pools = float_pool_inputs(dst)
        moved = quantise_before_transposes(dst)
    logger.info("int8: %s quantised (%s; %d output layer(s) kept float) with %d of %d "
                "calibration tile(s)", dst.name, ", ".join(ops), len(kept), len(tiles), given)
    return {"method": f"onnxruntime static QDQ, {name} calibration",
            "quantized_ops": list(ops), "float_layers": kept, "float_pool_inputs": pools,
            "quantised_before_transpose": moved,
            "weights": "int8 per channel", "activations": "uint8 per tensor",
            "calibration_tiles": len(tiles), "calibration_tiles_given": given}


def float_pool_inputs(path: Path) -> list[str]:
    """Rewrite the QDQ graph at ``path`` so that each max pooling of :data:`FLOAT_POOLS` whose
    input is a QuantizeLinear -> DequantizeLinear round trip of a float32 tensor reads that
    tensor itself; returns the pools' names. Why: onnxruntime moves the quantisation of the
    pooled features (the fully connected layer's input) up through the pooling, which then
    meets its input's round trip and runs as uint8 pooling on a plain NCHW kernel, several
    times slower on these (R, C, 14, 14) inputs than its blocked-layout float32 pooling
    (onnxruntime's profiler on the benchmark recipe; the whole graph's time: BENCHMARKS.md
    section 8h). The pooled values are then those of the float32 features, as in the float
    graph, and are quantised once, at the layer's input; the round trip stays for the
    operators that read it (the mask head's convolutions, the masking layer). A graph whose
    warped features no quantised layer reads directly (the fully connected mask head's: the
    quantiser quantises the flattened features instead) has no such round trip, and nothing
    is rewired."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    pools = []
    for node in graph.node:
        if node.op_type != "MaxPool" or not FLOAT_POOLS.search(node.name):
            continue
        dq = producer.get(node.input[0])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" \
            else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        node.input[0] = q.input[0]
        pools.append(node.name)
    if pools:
        used = {name for node in graph.node for name in node.input} | \
            {out.name for out in graph.output}
        orphans = [n for n in graph.node
                   if n.op_type == "DequantizeLinear" and not any(o in used for o in n.output)]
        for node in orphans:
            graph.node.remove(node)
        onnx.save(model, str(path))
    return pools


# operators that only move or relabel values: quantising their input instead of their output
# gives the same uint8 values (per-tensor scale and zero point), and they then move a quarter
# of the bytes
VALUE_MOVES = ("Transpose", "Flatten", "Reshape")


def quantise_before_transposes(path: Path) -> list[str]:
    """Rewrite the QDQ graph at ``path`` so that each QuantizeLinear (per-tensor) whose input
    comes through a chain of :data:`VALUE_MOVES` with a Transpose in it, each link read by the
    next alone, quantises the chain's input instead: the chain then moves uint8 values, and
    the DequantizeLinear reads its end. Returns the moved QuantizeLinear nodes' names. The
    values reaching the quantised layer are the same (quantisation is element-wise with one
    scale; transposing and reshaping do not change the values). Where: the fully connected
    mask head's input, MNC's warped features transposed from grid sampling's channel-major
    layout to box order and flattened, (R, C S S) floats per stage pair in float32 otherwise
    (mnc_d2.export.graph, MNCExportGraph._pair). A chain that starts at a max pooling is left
    as it is (comment below)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    nodes = []  # detached copies, rewired and reordered here, written back at the end
    for node in graph.node:
        nodes.append(onnx.NodeProto())
        nodes[-1].CopyFrom(node)
    producer = {out: node for node in nodes for out in node.output}
    readers: dict[str, int] = {}
    for node in nodes:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    for out in graph.output:
        readers[out.name] = readers.get(out.name, 0) + 1
    constants = {t.name: t for t in graph.initializer}
    moved, stale = [], set()
    for q in [n for n in nodes if n.op_type == "QuantizeLinear"]:
        scale = constants.get(q.input[1])
        if scale is None or numpy_helper.to_array(scale).size != 1:
            continue  # per-channel, or a scale computed in the graph
        chain, tensor = [], q.input[0]
        while (tensor in producer and producer[tensor].op_type in VALUE_MOVES
               and readers.get(tensor) == 1):
            chain.append(producer[tensor])
            tensor = producer[tensor].input[0]
        if not any(n.op_type == "Transpose" for n in chain):
            continue
        if tensor in producer and producer[tensor].op_type == "MaxPool":
            # onnxruntime would move a QuantizeLinear that follows a pooling up through it
            # and pool in uint8, on a kernel several times slower than its float32 one (the
            # pooled features' chain stays float32: it moves a quarter of the warps' values)
            continue
        first, last = chain[-1], chain[0]  # the chain in graph order: first reads `tensor`
        # X -> first .. last -> Q -> DQ becomes X -> Q -> first .. last -> DQ: Q reads X, the
        # chain reads Q's (renamed) output, and the chain's end takes Q's output name, which
        # the DequantizeLinear nodes read
        q.input[0] = tensor
        stale.update(n.output[0] for n in chain)  # float32 types recorded for them
        q.output[0], last.output[0] = f"{q.output[0]}_before_moves", q.output[0]
        first.input[0] = q.output[0]
        # Q now runs before the chain (the nodes stay in topological order)
        del nodes[next(i for i, n in enumerate(nodes) if n is q)]
        nodes.insert(next(i for i, n in enumerate(nodes) if n is first), q)
        moved.append(q.name)
    if moved:
        del graph.node[:]
        graph.node.extend(nodes)
        kept = [v for v in graph.value_info if v.name not in stale]
        del graph.value_info[:]
        graph.value_info.extend(kept)
        onnx.save(model, str(path))
    return moved


def _runs_on_detections(src: Path, ops: tuple[str, ...]) -> bool:
    """Whether the graph ``src`` has a layer of ``ops`` in a part that runs on its detections."""
    import onnx

    graph = onnx.load(str(src), load_external_data=False).graph
    return any(n.op_type in ops and n.name.startswith(ON_DETECTIONS) for n in graph.node)


def _tiles_with_detections(src: Path, tiles: list[np.ndarray], input_name: str
                           ) -> list[np.ndarray]:
    """The tiles on which the float graph ``src`` keeps at least one detection."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    return [t for t in tiles if len(session.run(["scores"], {input_name: t})[0])]
