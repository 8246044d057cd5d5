#!/usr/bin/env python
"""Generate synthetic SpaceNet data in a release's exact layout (default: SpaceNet 2).

    python datasets/prepare_synthetic_spacenet.py --out datasets/synthetic/spacenet \
        [--version spacenet2] [--cities vegas paris] [--images 60] [--seed 0] [--setting hard]
    python datasets/prepare_synthetic_spacenet.py --out datasets/synthetic/spacenet \
        --version spacenet4 --images 20      # 20 tiles x 3 collects (one per nadir segment)

Then ``DETECTRON2_DATASETS=datasets/synthetic`` makes the built-in names (spacenet2_vegas_train,
spacenet1_rio_train, spacenet4_atlanta_all_train, ...) read it. See mnc_d2/synthetic/spacenet2.py
and mnc_d2/synthetic/releases.py for what the scenes contain.
"""

import argparse
import logging

from mnc_d2.synthetic.spacenet2 import SETTINGS, STYLES
from mnc_d2.synthetic.releases import generate
from mnc_d2.data.versions import VERSIONS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="root that will hold the area folders")
    parser.add_argument("--version", default="spacenet2", choices=sorted(VERSIONS))
    parser.add_argument("--cities", nargs="+", default=["vegas", "paris"], choices=sorted(STYLES),
                        help="SpaceNet 2 cities")
    parser.add_argument("--images", type=int, default=60,
                        help="images per city (SpaceNet 1/2) or tiles (SpaceNet 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--setting", default="default", choices=sorted(SETTINGS),
                        help="hard: denser, smaller buildings, clutter, dark roofs dark in NIR")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.images < 1:
        parser.error(f"--images {args.images} must be >= 1")
    for root in generate(args.version, args.out, args.images, seed=args.seed,
                         setting=args.setting, cities=tuple(args.cities)):
        logging.info("wrote %s", root)


if __name__ == "__main__":
    main()
