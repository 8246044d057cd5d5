"""Run an exported model (``tools/export_model.py``) without Detectron2 or mnc_d2's model code.

One tile: the graph (onnxruntime, OpenVINO or TorchScript) gives boxes, scores, classes and soft
masks on their boxes; :func:`paste_masks` (numpy, the named post-processing step) pastes each
mask into the tile and thresholds it, as Detectron2's ``detector_postprocess`` does for the
eager model. The polygons are then traced by :func:`mnc_d2.geometry.instances
.instances_to_polygons`, the same step as the eager path.

Why the outputs are not bit-identical to eager PyTorch: another runtime sums and fuses in
another order (float32 rounding, ~1e-6 relative), and the paste here is the same bilinear
formula written as two small matrix products; a pixel whose mask value sits at the 0.5
threshold within that rounding can flip. The tests bound it (every building IoU >= 0.99, score
within 1e-3).
"""

from __future__ import annotations

import logging
import re
import warnings
import zipfile
from dataclasses import dataclass

import numpy as np

from .bundle import BACKEND_PACKAGES, ExportBundle, ExportError

logger = logging.getLogger(__name__)


def _quiet_torchscript_warnings() -> None:
    """Silence the two warnings every TorchScript prediction printed, and only those: recent
    torch deprecates ``torch.jit.load`` in favour of ``torch.export`` (a FutureWarning at each
    load; the graph still loads and runs, README "Deploying"), and the traced graph holds
    Detectron2's ``torch.meshgrid`` call without ``indexing`` (a UserWarning at the first tile;
    the "ij" order it means is torch's default)."""
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated",
                            category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release, it will "
                            r"be required to pass the indexing argument", category=UserWarning)


@dataclass
class Detections:
    """One tile's detections, numpy: boxes (R, 4) tile pixels, scores (R,), classes (R,),
    pred_masks (R, H, W) bool. Read by ``instances_to_polygons`` like Detectron2 Instances."""

    pred_boxes: np.ndarray
    scores: np.ndarray
    pred_classes: np.ndarray
    pred_masks: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def has(self, name: str) -> bool:
        return name in ("pred_boxes", "scores", "pred_classes", "pred_masks")


def _interpolation(lo: float, hi: float, start: int, stop: int, size: int) -> np.ndarray:
    """(stop - start, size) weights: bilinear samples (zero outside) of a ``size``-cell mask
    spanning [lo, hi] at the pixel centres start+0.5 .. stop-0.5 (grid_sample's rule,
    align_corners False)."""
    centres = np.arange(start, stop, dtype=np.float32) + np.float32(0.5)
    pos = (centres - np.float32(lo)) / np.float32(hi - lo) * np.float32(size) - np.float32(0.5)
    first = np.floor(pos)
    frac = (pos - first).astype(np.float32)
    first = first.astype(np.int64)
    weights = np.zeros((len(centres), size), dtype=np.float32)
    rows = np.arange(len(centres))
    for index, w in ((first, 1 - frac), (first + 1, frac)):
        ok = (index >= 0) & (index < size)
        weights[rows[ok], index[ok]] += w[ok]
    return weights


def paste_masks(masks: np.ndarray, boxes: np.ndarray, height: int, width: int,
                threshold: float = 0.5) -> np.ndarray:
    """Soft masks on their boxes -> full-tile bool masks, Detectron2's paste rule.

    masks: (R, M, M) float; boxes: (R, 4) x0, y0, x1, y1 tile pixels (non-empty). Each mask is
    sampled bilinearly at the pixel centres inside its box grown by one pixel (outside: False)
    and kept where >= ``threshold``. Returns (R, height, width) bool.
    """
    out = np.zeros((len(masks), height, width), dtype=bool)
    size = masks.shape[-1] if len(masks) else 0
    for k, (mask, (x0, y0, x1, y1)) in enumerate(zip(masks, boxes)):
        c0, r0 = max(int(np.floor(x0)) - 1, 0), max(int(np.floor(y0)) - 1, 0)
        c1, r1 = min(int(np.ceil(x1)) + 1, width), min(int(np.ceil(y1)) + 1, height)
        if c1 <= c0 or r1 <= r0:
            continue
        rows = _interpolation(y0, y1, r0, r1, size)
        cols = _interpolation(x0, x1, c0, c1, size)
        out[k, r0:r1, c0:c1] = rows @ mask.astype(np.float32) @ cols.T >= threshold
    return out


def _need(package: str, backend: str):
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise ExportError(f"backend {backend} needs the Python package {package!r}, which is "
                          f"not installed here: pip install {BACKEND_PACKAGES[backend]}"
                          ) from None


def graph_input(image: np.ndarray, tile: tuple[int, int], fill: np.ndarray) -> np.ndarray:
    """(H, W, C) raw band values, H x W at most ``tile`` -> the graph's (1, C, th, tw) float32
    input: padded below and right with ``fill`` (the band means, which normalise to 0)."""
    (th, tw), (height, width, channels) = tile, image.shape
    if (height, width) != (th, tw):
        padded = np.empty((th, tw, channels), dtype=np.float32)
        padded[:] = fill
        padded[:height, :width] = image
        image = padded
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)


_DEVICE_CONSTANT = re.compile(r'torch\.device\("([^"]+)"\)')


def _device_name(device: str) -> str:
    """"cuda" -> "cuda:0" (the device torch.device("cuda") means); other names as given."""
    return "cuda:0" if device == "cuda" else device


def traced_devices(path) -> set[str]:
    """The devices a saved TorchScript archive names as constants (``torch.device("cpu")`` in
    its code), e.g. {"cpu"} for a graph traced on the CPU whose anchors and index ranges were
    made there. Read from the archive's code entries; nothing is loaded."""
    found = set()
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if "/code/" in name and name.endswith(".py"):
                found.update(_DEVICE_CONSTANT.findall(archive.read(name).decode("utf-8")))
    return found


# onnxruntime graph optimisers left off, by backend. The int8 graph runs without
# NchwcTransformer, the optimiser that moves float32 operators into onnxruntime's blocked channel
# layout (NCHWc) and reorders their inputs into it and their outputs out of it. In the int8 graph
# it reaches only the few float32 operators (the RPN's output layers, MNC's 2 x 2 max pooling of
# the warped features in its classification heads, Mask R-CNN's mask predictor), where the
# reorders of the (R, C, 14, 14) warps cost more than the blocked pooling saves (onnxruntime's
# profiler; the whole graph's time with and without it: BENCHMARKS.md section 8k). The float32
# graph keeps it: its convolutions gain more from the blocked layout than the reorders cost.
ORT_DISABLED_OPTIMIZERS = {"onnxruntime-int8": ("NchwcTransformer",)}


def ort_session(path, backend: str, threads: int | None = None, options=None,
                disabled_optimizers: tuple[str, ...] | None = None):
    """An onnxruntime CPU session of the graph at ``path`` as ``backend`` runs it: ``threads``
    intra-op threads (None: onnxruntime's default), ``options`` (a SessionOptions to start
    from, e.g. with profiling on), the optimisers of :data:`ORT_DISABLED_OPTIMIZERS` left off
    unless ``disabled_optimizers`` names others (() for none)."""
    ort = _need("onnxruntime", backend)
    options = options or ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if disabled_optimizers is None:
        disabled_optimizers = ORT_DISABLED_OPTIMIZERS.get(backend, ())
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled_optimizers))


class ExportedModel:
    """An exported graph on one backend: ``model(image)`` -> :class:`Detections`.

    image: (H, W, C) float32 band values (the bands of ``bundle.bands``, their DNs after
    ``bundle.dn_transform``, as tools/predict.py reads them), H x W at most the
    exported tile size; smaller tiles (scenes smaller than a tile) are padded with the band
    means, which the model's normalisation maps to 0 (the eager model resizes them instead).
    ``threads``: intra-op threads (None: the runtime's default). ``device``: where the
    TorchScript graph runs (None: where it was traced, ``torchscript_device`` in export.json,
    tools/export_model.py ``--device``); the ONNX backends run on the CPU. A traced graph holds
    the device it was traced on as constants (:func:`traced_devices`), so another device, or a
    CUDA trace on a machine without CUDA, is an ``ExportError`` here rather than a device
    mismatch inside the graph at the first tile. ``ort_disabled``: the onnxruntime graph
    optimisers left off (None: the backend's :data:`ORT_DISABLED_OPTIMIZERS`; the benchmark
    passes () to time the session with all of them).
    """

    def __init__(self, bundle: ExportBundle, backend: str = "onnxruntime",
                 threads: int | None = None, device: str | None = None,
                 ort_disabled: tuple[str, ...] | None = None):
        if device is None:
            device = bundle.device(backend)
        if device != "cpu" and backend != "torchscript":
            raise ExportError(f"device {device!r}: backend {backend} runs on the CPU here; "
                              "on a GPU, use --backend torchscript exported with "
                              "tools/export_model.py --device cuda, or the training run's "
                              "model with --backend torch")
        self.bundle, self.backend = bundle, backend
        path = bundle.graph_path(backend)
        self.tile = bundle.tile_shape
        self.fill = np.asarray(bundle.pixel_mean, dtype=np.float32)
        runtime = BACKEND_PACKAGES[backend]  # the package that runs it (graph_path checked it)
        if runtime == "onnxruntime":  # onnxruntime, onnxruntime-int8
            session = ort_session(path, backend, threads, disabled_optimizers=ort_disabled)
            name = session.get_inputs()[0].name
            self._call = lambda x: session.run(None, {name: x})
        elif runtime == "openvino":  # openvino, openvino-int8
            ov = _need(runtime, backend)
            # f32: OpenVINO's CPU plugin otherwise runs in bf16 where the CPU has it, which moves
            # scores by ~0.1 (measured); speed with it is a deployment choice, not a default.
            # The int8 graph's quantised layers (QuantizeLinear / DequantizeLinear pairs) run on
            # its int8 kernels whatever this hint says; the hint keeps the rest float32.
            config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
            if threads:
                config["INFERENCE_NUM_THREADS"] = int(threads)
            compiled = ov.Core().compile_model(str(path), "CPU", config)
            request = compiled.create_infer_request()

            def call(x):
                result = request.infer({0: x})
                return [np.asarray(result[out]) for out in compiled.outputs]
            self._call = call
        else:  # torchscript
            torch = _need("torch", backend)
            _need("torchvision", backend)  # registers the nms / roi_align operators
            traced = traced_devices(path)
            other = sorted(d for d in traced if _device_name(d) != _device_name(device))
            if other:
                raise ExportError(
                    f"{path}: traced on {', '.join(other)} (torch.jit.trace keeps the device "
                    f"as constants in the graph), so it cannot run on {device!r}; run it on "
                    f"{other[0]}, or run the training run's model with --backend torch there")
            if device.startswith("cuda") and not torch.cuda.is_available():
                raise ExportError(
                    f"{path}: the TorchScript graph runs on {device} (traced there: "
                    "tools/export_model.py --device), and this machine has no CUDA device; "
                    "export again with --device cpu to run it here, or use --backend "
                    "onnxruntime")
            if threads:
                torch.set_num_threads(int(threads))
            _quiet_torchscript_warnings()
            module = torch.jit.load(str(path), map_location=device).eval()

            def call(x):
                # Without the profiling executor's re-optimisation per new shape (each tile has
                # its own detection count): measured as fast after warm-up, and no slow first calls.
                with torch.no_grad(), torch.jit.optimized_execution(False):
                    found = module(torch.from_numpy(x).to(device))
                    return [t.cpu().numpy() for t in found]
            self._call = call

    def __call__(self, image: np.ndarray) -> Detections:
        height, width, channels = image.shape
        if channels != len(self.fill):
            raise ValueError(f"the exported model reads {len(self.fill)} band(s), the image "
                             f"has {channels}")
        th, tw = self.tile
        if height > th or width > tw:
            raise ValueError(f"a {height} x {width} tile is larger than the exported model's "
                             f"{th} x {tw}: predict with --tile-size {tw} or re-export with "
                             f"--tile-size {max(height, width)}")
        boxes, scores, classes, masks = self._call(graph_input(image, self.tile, self.fill))
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        # detector_postprocess: boxes clipped to the real tile, empty ones dropped
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, masks = boxes[keep], np.asarray(masks, dtype=np.float32)[keep]
        return Detections(boxes, np.asarray(scores, dtype=np.float32)[keep],
                          np.asarray(classes)[keep], paste_masks(masks, boxes, height, width))
