#!/usr/bin/env python
"""Predict building footprints on GeoTIFFs of any size.

    python tools/predict.py --config-file output/run/config.yaml \
        --input A.tif [B.tif ...] --output DIR [--tile-size 650 --overlap 128 --batch-size 2]
        [--no-png] [--score-thresh T] [MODEL.WEIGHTS output/run/model_final.pth] [KEY VALUE ...]

Writes per input: <name>_buildings.geojson (source CRS), <name>_proposals.csv (SpaceNet proposal
format, pixel coordinates) and <name>_overlay.png. Use the config.yaml of the training run so that
band selection and normalisation match training. The score threshold is --score-thresh when
given, else the best threshold the training run's evaluation recorded next to the weights
(score_threshold.json), else TEST.SPACENET.SCORE_THRESH.
"""

import argparse
import logging
import sys

import mnc_d2

mnc_d2.setup()  # shims and registrations before anything else of detectron2
from mnc_d2.engine.trainer import setup_cfg
from mnc_d2.inference import ScenePredictor, write_outputs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", nargs="+", required=True, help="GeoTIFF file(s)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--tile-size", type=int, default=650)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--no-png", action="store_true", help="skip the PNG overlays")
    parser.add_argument("--score-thresh", type=float,
                        help="detection score threshold (default: the run's recorded best)")
    parser.add_argument("--rgb-bands", type=int, nargs=3, help="1-based bands for the overlay")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = setup_cfg(args.config_file, args.opts, for_training=False)
        if not cfg.MODEL.WEIGHTS:
            raise ValueError("no weights: pass MODEL.WEIGHTS path/to/model_final.pth")
        predictor = ScenePredictor(cfg, args.tile_size, args.overlap, args.batch_size,
                                   score_thresh=args.score_thresh)
        for path in args.input:
            pred = predictor.predict(path)
            written = write_outputs(pred, args.output, png=not args.no_png,
                                    rgb_bands=args.rgb_bands)
            print(f"{path}: {len(pred.polygons)} buildings -> "
                  + ", ".join(str(p) for p in written.values()))
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
