#!/usr/bin/env python
"""Score a SpaceNet proposal CSV against a truth CSV (SpaceNet 2 or solaris 0.4.0 rules).

    python tools/score.py --truth T.csv --proposals P.csv [--rules spacenet|solaris]
                          [--per-image OUT.csv] [--json]
"""

import argparse
import json
import logging
import sys

from mnc_d2.evaluation.report import score_table
from mnc_d2.evaluation.spacenet_metric import RULES, SpaceNetCSVError, score_csv
from mnc_d2.utils.atomic import atomic_write


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--truth", required=True, help="truth CSV (ImageId,BuildingId,PolygonWKT_Pix,...)")
    parser.add_argument("--proposals", required=True, help="proposal CSV (...,Confidence)")
    parser.add_argument("--rules", choices=RULES, default="spacenet")
    parser.add_argument("--per-image", metavar="OUT.csv", help="also write per-image rows here")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        result = score_csv(args.truth, args.proposals, rules=args.rules)
    except SpaceNetCSVError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.per_image:
        with atomic_write(args.per_image, "w", newline="") as handle:
            result.per_image.to_csv(handle, index=False)
    print(json.dumps(result.to_json(), indent=2) if args.json else score_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
