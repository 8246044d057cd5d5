"""``tools/export_model.py``'s command line."""

from __future__ import annotations

import argparse
import sys

from ..utils.argv import split_config_overrides
from ..utils.logs import configure_cli_logging


def main(argv=None, description: str = "Export a trained model") -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config-file", required=True, help="the training run's config.yaml")
    parser.add_argument("--output", required=True, help="the exported folder (replaced)")
    parser.add_argument("--formats", default="onnx,torchscript",
                        help="comma-separated: onnx (onnxruntime, OpenVINO), torchscript, "
                             "onnx-int8 (onnxruntime-int8, openvino-int8: int8 convolutions "
                             "and fully connected layers but the heads' output layers, "
                             "calibrated), onnx-openvino and onnx-int8-openvino (the float and "
                             "int8 graphs in the form OpenVINO runs fastest, an MNC's RoI "
                             "warps as RoIAlign: --backend openvino and openvino-int8 run "
                             "them instead of onnx and onnx-int8)")
    parser.add_argument("--calibration", nargs="+", metavar="PATH",
                        help="onnx-int8: GeoTIFFs (files or quoted globs) to calibrate on "
                             "(default: the run's DATASETS.TRAIN images)")
    parser.add_argument("--calibration-images", type=int, default=32,
                        help="onnx-int8: how many calibration tiles (default 32)")
    parser.add_argument("--check-images", nargs="+", metavar="PATH",
                        help="GeoTIFFs (files or quoted globs) whose top-left tiles the "
                             "export's own check compares too (default: only the synthetic "
                             "trace tile, where a trained model usually finds nothing)")
    parser.add_argument("--tile-size", type=int, default=650,
                        help="the square tile the graph takes (predict.py's --tile-size)")
    parser.add_argument("--device", default="cpu",
                        help="where the TorchScript graph is traced and will run: cpu "
                             "(default) or cuda[:N] (a trace keeps its device; the ONNX graph "
                             "always comes from the CPU)")
    parser.add_argument("--warp-layout", default="stacked", choices=("stacked", "roialign"),
                        help="an MNC graph's RoI warps: stacked (default; one grid sampling per "
                             "stage pair on the stacked FPN levels, the fastest on onnxruntime) "
                             "or roialign (one RoIAlign per stage pair on the same map: the same "
                             "samples, faster on OpenVINO; BENCHMARKS.md section 8m) of the onnx, "
                             "onnx-int8 and torchscript graphs (the *-openvino graphs are "
                             "always roialign)")
    parser.add_argument("--score-thresh", type=float,
                        help="recorded threshold (default: the run's recorded best)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    args.calibration, args.opts = split_config_overrides(args.calibration, args.opts)
    args.check_images, args.opts = split_config_overrides(args.check_images, args.opts)
    configure_cli_logging()
    if args.tile_size < 1 or args.calibration_images < 1:
        bad = (f"--tile-size {args.tile_size}" if args.tile_size < 1
               else f"--calibration-images {args.calibration_images}")
        print(f"error: {bad} must be at least 1", file=sys.stderr)
        return 2
    from ..inference.threshold import check_score_threshold

    try:
        check_score_threshold(args.score_thresh)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from ..engine.setup import setup_cfg
    from .bundle import ExportError
    from .exporter import export_model

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    try:
        cfg = setup_cfg(args.config_file, args.opts, for_training=False, needs_datasets=False)
        export_model(cfg, args.output, formats, args.tile_size, args.score_thresh,
                     args.calibration, args.calibration_images, args.device,
                     args.check_images, args.warp_layout)
    except (ExportError, ValueError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
