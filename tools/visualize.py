#!/usr/bin/env python
"""Draw SpaceNet TP (white) / FP (yellow) / FN (blue) overlays, each proposal labelled with its IoU.

    python tools/visualize.py --truth T.csv --proposals P.csv --images DIR --output OUT
                              [--image-id AOI_2_Vegas_img12 ...] [--rules spacenet|solaris]
                              [--bands 5 3 2]

Exit status 0, 1 when some image's overlay could not be drawn (named; the others are written),
2 for unusable input.
"""

import argparse
import sys

from mnc_d2.evaluation.spacenet_metric import RULES, SpaceNetCSVError
from mnc_d2.evaluation.visualize import visualize_csvs
from mnc_d2.utils.logs import configure_cli_logging


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--truth", required=True)
    parser.add_argument("--proposals", required=True)
    parser.add_argument("--images", required=True, help="folder holding the GeoTIFF tiles")
    parser.add_argument("--output", required=True, help="folder for the PNG overlays")
    parser.add_argument("--image-id", nargs="*", help="only these ImageIds (default: all)")
    parser.add_argument("--rules", choices=RULES, default="spacenet")
    parser.add_argument("--bands", nargs=3, type=int, help="1-based bands shown as R G B")
    args = parser.parse_args(argv)
    configure_cli_logging(fmt="%(levelname)s %(message)s")
    try:
        paths, failed = visualize_csvs(args.truth, args.proposals, args.images, args.output,
                                       image_ids=args.image_id, rules=args.rules,
                                       bands=args.bands)
    except (SpaceNetCSVError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} overlay(s) to {args.output}")
    for image_id, reason in failed.items():
        print(f"no overlay for {image_id}: {reason}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
