#!/usr/bin/env python
"""Train or evaluate MNC (or the Mask R-CNN baseline) on SpaceNet with Detectron2.

    python tools/train_net.py --config-file configs/SpaceNet2/mnc_R_50_FPN_3x_vegas.yaml \
        --num-gpus 8 [--resume] [--eval-only MODEL.WEIGHTS out/model_final.pth] [KEY VALUE ...]

Without CUDA, --num-gpus N runs N CPU processes with the gloo backend.
"""

import mnc_d2

mnc_d2.setup()  # shims and registrations before anything else of detectron2
from detectron2.engine import default_argument_parser  # noqa: E402

from mnc_d2.engine import launch  # noqa: E402
from mnc_d2.engine.setup import (  # noqa: E402
    check_config_file, check_overrides_arg, check_weights_arg, default_setup_keeping_run_config,
    setup_cfg)
from mnc_d2.engine.evaluate import evaluate_only  # noqa: E402
from mnc_d2.engine.trainer import Trainer  # noqa: E402


def main(args):
    """Run in each process: train (or evaluate with --eval-only)."""
    cfg = setup_cfg(args.config_file, args.opts, for_training=not args.eval_only,
                    log_to_output=True)
    default_setup_keeping_run_config(cfg, args)
    if args.eval_only:  # --resume: the run's own last checkpoint when it has one
        return evaluate_only(cfg, resume=args.resume)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    try:  # before any process starts
        check_config_file(args.config_file)
        check_overrides_arg(args.config_file, args.opts)
        check_weights_arg(args.opts, args.resume)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}")
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
