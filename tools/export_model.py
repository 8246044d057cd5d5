#!/usr/bin/env python
"""Export a trained model to ONNX and TorchScript, for prediction without Detectron2.

    python tools/export_model.py --config-file output/run/config.yaml --output exported/ \
        [--formats onnx,torchscript] [--tile-size 650] [--score-thresh T] \
        MODEL.WEIGHTS output/run/model_final.pth [KEY VALUE ...]

Then: python tools/predict.py --backend onnxruntime --model exported/ --input ... --output ...
Exit status 0: exported; 2: usage error (bad config, weights, formats).
"""

import sys

import mnc_d2

mnc_d2.setup()
from mnc_d2.export.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(description=__doc__.splitlines()[0]))
