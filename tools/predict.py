#!/usr/bin/env python
"""Predict building footprints on GeoTIFF scenes of any size, one or a whole city.

    python tools/predict.py --config-file output/run/config.yaml \
        --input A.tif 'city/*.tif' @more_scenes.txt --output OUT \
        [--engine local|ray --workers N --cpus-per-worker C --gpus-per-worker G --ray-address ADDR]
        [--formats parquet,geojson,csv,png] [--overwrite] [--manifest-csv]
        [--tile-size 650 --overlap 128 --batch-size 2] [--score-thresh T] \
        MODEL.WEIGHTS output/run/model_final.pth [KEY VALUE ...]
    python tools/predict.py --backend onnxruntime|openvino|torchscript --model EXPORTED_DIR \
        --input ... --output OUT [same options]     (tools/export_model.py writes EXPORTED_DIR)

Writes OUT/buildings/<scene>.parquet (GeoParquet 1.1, EPSG:4326), OUT/manifest.parquet (one row
per scene and run: ok / failed / skipped) and OUT/run.json. Re-running the same command skips the
scenes already done. Exit status 0: all scenes succeeded; 1: some failed (see the manifest);
2: usage error. The score threshold is --score-thresh when given, else the best threshold the
training run's evaluation recorded next to the weights, else TEST.SPACENET.SCORE_THRESH.
"""

import sys

# Importing the package arms the Detectron2 shims (applied only if Detectron2 is loaded: the
# exported-model backends never load it).
from mnc_d2.inference.run import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__.splitlines()[0]))
