#!/usr/bin/env python
"""Train or evaluate MNC (or the Mask R-CNN baseline) on SpaceNet with Detectron2.

    python tools/train_net.py --config-file configs/SpaceNet2/mnc_R_50_FPN_3x_vegas.yaml \
        --num-gpus 8 [--resume] [--eval-only MODEL.WEIGHTS out/model_final.pth] [KEY VALUE ...]

Without CUDA, --num-gpus N runs N CPU processes with the gloo backend.
"""

import mnc_d2

mnc_d2.setup()  # shims and registrations before anything else of detectron2
from detectron2.engine import default_argument_parser

from mnc_d2.engine import launch
from mnc_d2.engine.trainer import train_main


def main() -> None:
    args = default_argument_parser().parse_args()
    launch(train_main, args.num_gpus, num_machines=args.num_machines,
           machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    main()
