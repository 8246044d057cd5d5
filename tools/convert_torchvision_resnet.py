#!/usr/bin/env python
"""Convert torchvision ResNet ImageNet weights into a Detectron2 backbone checkpoint (.pkl).

    # where you have internet (any machine): the file torchvision downloads for
    # torchvision.models.resnet50(weights="IMAGENET1K_V2"), or V1: resnet50-0676ba61.pth
    wget https://download.pytorch.org/models/resnet50-11ad3fa6.pth
    python tools/convert_torchvision_resnet.py resnet50-11ad3fa6.pth pretrained/R-50-torchvision.pkl

then train with configs/SpaceNet2/*_imagenet_torchvision.yaml (they read
pretrained/R-50-torchvision.pkl; set MODEL.WEIGHTS for another path). The names mapping is in
mnc_d2/modeling/torchvision_weights.py.
"""

import argparse
import logging
import sys

from mnc_d2.modeling.torchvision_weights import convert_torchvision_file
from mnc_d2.utils.logs import configure_cli_logging


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="torchvision ResNet state_dict (.pth)")
    parser.add_argument("dst", help="Detectron2 checkpoint to write (.pkl)")
    args = parser.parse_args(argv)
    configure_cli_logging()
    try:
        model = convert_torchvision_file(args.src, args.dst)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("convert").info("%d backbone tensors written to %s", len(model), args.dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
