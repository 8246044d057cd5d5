#!/usr/bin/env python
"""Predict building footprints on GeoTIFF scenes of any size, one or a whole city.

    python tools/predict.py --config-file output/run/config.yaml \
        --input A.tif 'city/*.tif' @more_scenes.txt --output OUT \
        [--engine local|ray --workers N --cpus-per-worker C --gpus-per-worker G --ray-address ADDR]
        [--formats parquet,geojson,csv,png] [--overwrite] [--manifest-csv]
        [--tile-size 650 --overlap 128 --batch-size 2] [--score-thresh T] \
        MODEL.WEIGHTS output/run/model_final.pth [KEY VALUE ...]

Writes OUT/buildings/<scene>.parquet (GeoParquet 1.1, EPSG:4326), OUT/manifest.parquet (one row
per scene and run: ok / failed / skipped) and OUT/run.json. Re-running the same command skips the
scenes already done. Exit status 0: all scenes succeeded; 1: some failed (see the manifest);
2: usage error. The score threshold is --score-thresh when given, else the best threshold the
training run's evaluation recorded next to the weights, else TEST.SPACENET.SCORE_THRESH.
"""

import sys

import mnc_d2

mnc_d2.setup()  # shims and registrations before anything else of detectron2
from mnc_d2.inference.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(description=__doc__.splitlines()[0]))
