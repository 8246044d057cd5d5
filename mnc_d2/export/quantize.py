"""INT8 post-training quantisation of the exported ONNX graph (``--formats onnx-int8``).

What is quantised: the convolutions (backbone, FPN, RPN; 80-90% of the FLOPs of the benchmark
models) and the fully connected layers (``Gemm``: the MNC stages' classifiers, box regressors
and mask layers), statically, with onnxruntime's quantiser in QDQ form: int8 weights per output
channel, uint8 activations whose ranges come from calibration tiles run through the float graph
(the quantiser's default min-max calibration). Everything else stays float32: RoI warping, NMS,
mask voting (its one-hot sums are ``MatMul``, deliberately not quantised) and the masks'
sigmoid. onnxruntime runs the quantised layers with integer kernels (VNNI where the CPU has
it). With only the convolutions quantised the fully connected layers took a fifth of the
quantised graph's time on the benchmark model, at the same F1 (measured on one model).

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

import glob
import logging
import tempfile
from pathlib import Path

import numpy as np

from .bundle import ExportError

logger = logging.getLogger(__name__)

QUANTIZED_OPS = ("Conv", "Gemm")


def calibration_files(cfg, count: int, paths: list[str] | None = None) -> list[str]:
    """``count`` image paths for calibration: from ``paths`` (files or glob patterns) when
    given, else evenly spaced over the run's training datasets (``cfg.DATASETS.TRAIN``)."""
    if count < 1:
        raise ExportError(f"--calibration-images {count}: quantisation needs at least one tile")
    if paths:
        files = sorted({f for p in paths for f in (glob.glob(p) or [p])})
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise ExportError(f"--calibration: {missing[0]} is not a file")
    else:
        from detectron2.data import DatasetCatalog

        files = []
        for name in cfg.DATASETS.TRAIN:
            try:
                files += [d["file_name"] for d in DatasetCatalog.get(name)]
            except (KeyError, FileNotFoundError, OSError, ValueError) as exc:
                raise ExportError(
                    f"int8 calibration reads training tiles of DATASETS.TRAIN {name!r}, which "
                    f"is not readable here ({exc}); set DETECTRON2_DATASETS to the data root or "
                    "pass --calibration 'PATH/*.tif'") from None
    if not files:
        raise ExportError("int8 calibration found no image (DATASETS.TRAIN is empty and no "
                          "--calibration was given)")
    step = max(1, len(files) // count)
    return files[::step][:count]


def calibration_tiles(files: list[str], bands: list[int], fill: list[float],
                      tile: int) -> list[np.ndarray]:
    """(1, C, tile, tile) float32 inputs of the exported graph, one per file: the top-left
    window (padded with the band means where the image is smaller)."""
    import rasterio
    from rasterio.windows import Window

    from ..data.bands import read_bands
    from .runtime import graph_input

    out = []
    for path in files:
        with rasterio.open(path) as src:
            window = Window(0, 0, min(tile, src.width), min(tile, src.height))
            image = read_bands(src, bands, fill, window)
        out.append(graph_input(image, (tile, tile), np.asarray(fill, dtype=np.float32)))
    return out


def quantize_onnx(src: Path, dst: Path, tiles: list[np.ndarray], input_name: str = "image"
                  ) -> dict:
    """Write the statically quantised ``src`` graph to ``dst``; returns what was done (for
    export.json)."""
    try:
        from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                              quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise ExportError("--formats onnx-int8 needs onnxruntime's quantiser: pip install "
                          "onnxruntime") from None

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._feeds = iter([{input_name: t} for t in tiles])

        def get_next(self):
            return next(self._feeds, None)

    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # folds constants and infers shapes so the quantiser sees every Conv's input ranges
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, op_types_to_quantize=list(QUANTIZED_OPS),
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    logger.info("int8: %s quantised (%s) with %d calibration tile(s)", dst.name,
                ", ".join(QUANTIZED_OPS), len(tiles))
    return {"method": "onnxruntime static QDQ, min-max calibration",
            "quantized_ops": list(QUANTIZED_OPS), "weights": "int8 per channel",
            "activations": "uint8 per tensor", "calibration_tiles": len(tiles)}
