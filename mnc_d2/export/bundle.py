"""The exported-model folder (``tools/export_model.py`` writes it, every backend reads it).

    EXPORT_DIR/
      export.json   what a deployment needs besides the graph: bands (indices and names),
                    what their DNs become before the graph (INPUT.DN_TRANSFORM),
                    ground sample distance, tile size the graph takes, score threshold and
                    polygon settings, the files with their SHA-256, the mnc_d2 version, the
                    source config (text) and weights' hash
      model.onnx    the whole model as one ONNX graph (onnxruntime, OpenVINO)
      model.ts      the same graph as TorchScript (``torch.jit.load``)
      model.int8.onnx  (``--formats onnx-int8``) the ONNX graph with int8 convolutions
                    (:mod:`.quantize`; backends ``onnxruntime-int8`` and ``openvino-int8``)
      model.openvino.onnx, model.int8.openvino.onnx  (``--formats onnx-openvino``,
                    ``onnx-int8-openvino``) the same graphs in the form OpenVINO runs fastest
                    (an MNC's RoI warps as RoIAlign, ``warp_layout`` "roialign"); backends
                    ``openvino`` and ``openvino-int8`` run them instead of model.onnx and
                    model.int8.onnx when the folder has them
      config.yaml   the training run's config, for reference

export.json's ``warp_layouts`` names each graph file's form of the MNC RoI warps, ``int8`` the
int8 graph's quantisation (model.int8.onnx's, else OpenVINO's) and ``int8_openvino`` that of
model.int8.openvino.onnx; its ``check`` the file each backend ran.

Torch-free: reading and checking a folder needs only the standard library.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

EXPORT_FILE = "export.json"
FORMAT = "mnc_d2-export"
# 2: input.dn_transform (INPUT.DN_TRANSFORM) recorded; a reader of format 1 would ignore it.
FORMAT_VERSION = 2
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.ts",
               "onnx-int8": "model.int8.onnx", "onnx-openvino": "model.openvino.onnx",
               "onnx-int8-openvino": "model.int8.openvino.onnx"}
OPENVINO_WARP_LAYOUT = "roialign"  # the MNC warps of OpenVINO's graphs (BENCHMARKS.md 8m)
# Backends and the graph files each one runs, the first the folder has.
BACKEND_FILES = {"onnxruntime": ("onnx",), "openvino": ("onnx-openvino", "onnx"),
                 "torchscript": ("torchscript",), "onnxruntime-int8": ("onnx-int8",),
                 "openvino-int8": ("onnx-int8-openvino", "onnx-int8")}
BACKEND_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino",
                    "torchscript": "torch", "onnxruntime-int8": "onnxruntime",
                    "openvino-int8": "openvino"}


class ExportError(ValueError):
    """An exported folder that cannot be used (missing file, other version, wrong hash)."""


def _minor(version: str) -> str:
    return ".".join(str(version).split(".")[:2])


@dataclass
class ExportBundle:
    """A checked exported-model folder."""

    root: Path
    meta: dict

    @property
    def tile_shape(self) -> tuple[int, int]:
        return int(self.meta["input"]["tile_height"]), int(self.meta["input"]["tile_width"])

    @property
    def bands(self) -> list[int]:
        return [int(b) for b in self.meta["input"]["bands"]]

    @property
    def band_names(self) -> list[str]:
        return [str(n) for n in self.meta["input"]["band_names"]]

    @property
    def pixel_mean(self) -> list[float]:
        return [float(v) for v in self.meta["input"]["pixel_mean"]]

    @property
    def data_std(self) -> list[float]:
        """The training imagery's spread per band on the model's input scale (band_stats.json's
        std); exports before it was recorded: pixel_std (the same unless
        INPUT.BAND_STATS_TARGET_STD was changed from 1)."""
        values = self.meta["input"].get("data_std") or self.meta["input"]["pixel_std"]
        return [float(v) for v in values]

    @property
    def dn_transform(self) -> str:
        """INPUT.DN_TRANSFORM of the run: what the DNs become before the graph's normalisation
        (applied by the caller, e.g. tools/predict.py on read)."""
        return str(self.meta["input"].get("dn_transform", ""))

    @property
    def gsd(self) -> float:
        value = self.meta["input"].get("gsd")
        return float(value) if value else float("nan")

    def device(self, backend: str) -> str:
        """Where ``backend``'s graph runs: the TorchScript graph where it was traced
        (``torchscript_device``, tools/export_model.py --device; exports without the key were
        traced on the CPU), the ONNX runtimes on the CPU."""
        if backend == "torchscript":
            return self.meta.get("torchscript_device") or "cpu"
        return "cpu"

    def graph_kind(self, backend: str) -> str:
        """The graph file kind ``backend`` runs: the first of :data:`BACKEND_FILES`'s the
        folder has (OpenVINO's own form before the shared ONNX graph)."""
        if backend not in BACKEND_FILES:
            raise ExportError(f"backend {backend!r}: exported models run on "
                              f"{', '.join(BACKEND_FILES)}")
        kinds = BACKEND_FILES[backend]
        for kind in kinds:
            if self.meta["files"].get(kind):
                return kind
        raise ExportError(f"{self.root / EXPORT_FILE}: this export has no "
                          f"{' or '.join(kinds)} graph (backend {backend}); re-export with "
                          f"--formats {kinds[0]}")

    def graph_path(self, backend: str) -> Path:
        return self.root / self.meta["files"][self.graph_kind(backend)]

    def warp_layout(self, kind: str) -> str | None:
        """How graph ``kind``'s MNC RoI warps read the FPN levels (None: a Mask R-CNN's)."""
        layouts = self.meta.get("warp_layouts") or {}
        return layouts.get(kind, self.meta.get("warp_layout"))


def read_bundle(root: str | Path, check_hashes: bool = True) -> ExportBundle:
    """Open and check an exported folder; raises ExportError naming the file and the fix."""
    from .. import __version__
    from ..inference.scenes import sha256_of

    root = Path(root)
    path = root / EXPORT_FILE
    if not path.is_file():
        raise ExportError(f"{root} is not an exported mnc_d2 model (no {EXPORT_FILE}); "
                          "create one with tools/export_model.py")
    try:
        meta = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise ExportError(f"{path}: unreadable ({exc}); export the model again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ExportError(f"{path} is not an mnc_d2 export description")
    if meta.get("format_version") != FORMAT_VERSION or \
            _minor(meta.get("mnc_d2_version", "")) != _minor(__version__):
        raise ExportError(f"{path} was written by mnc_d2 {meta.get('mnc_d2_version')} (export "
                          f"format {meta.get('format_version')}); this is mnc_d2 "
                          f"{__version__} (format {FORMAT_VERSION}): export the model again "
                          "with tools/export_model.py of this version")
    for key in ("input", "files", "sha256", "score_thresh", "post"):
        if key not in meta:
            raise ExportError(f"{path}: key {key!r} missing; export the model again")
    for kind, name in meta["files"].items():
        file = root / name
        if not file.is_file():
            raise ExportError(f"{file} is missing ({kind} graph named in {path}); copy the "
                              "whole exported folder or export the model again")
        if check_hashes and sha256_of(file) != meta["sha256"].get(name):
            raise ExportError(f"{file}: SHA-256 differs from {path} (a partial copy or "
                              "another model's file); copy the folder again or re-export")
    return ExportBundle(root, meta)
