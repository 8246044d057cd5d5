#!/usr/bin/env python
"""Generate synthetic SpaceNet 2 data in the exact released layout.

    python datasets/prepare_synthetic_spacenet.py --out datasets/synthetic/spacenet \
        --cities vegas paris --images 60 --seed 0 [--setting hard]

Then ``DETECTRON2_DATASETS=datasets/synthetic`` makes the built-in names (spacenet2_vegas_train,
...) read it. See mnc_d2/data/synthetic.py for what the scenes contain.
"""

import argparse
import logging

from mnc_d2.data.synthetic import SETTINGS, STYLES, generate_city


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="root that will hold AOI_*_Train folders")
    parser.add_argument("--cities", nargs="+", default=["vegas", "paris"], choices=sorted(STYLES))
    parser.add_argument("--images", type=int, default=60, help="images per city")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--setting", default="default", choices=sorted(SETTINGS),
                        help="hard: denser, smaller buildings, clutter, dark roofs dark in NIR")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for city in args.cities:
        root = generate_city(args.out, city, args.images, seed=args.seed,
                             setting=args.setting)
        logging.info("wrote %s", root)


if __name__ == "__main__":
    main()
