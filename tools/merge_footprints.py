#!/usr/bin/env python
"""Merge a prediction folder's per-scene GeoParquet files into one city-wide GeoParquet.

    python tools/merge_footprints.py OUTPUT --out city.parquet

A building on a seam between scenes, found by each (whole, or cut by each scene's edge and short
of it by a few pixels), comes out once: the best-scoring whole polygon, or the union of the
pieces with the seam's gap filled (mnc_d2/inference/seams.py); rows are ordered spatially
(Hilbert), memory stays bounded by the seams being merged, and the file is written atomically.
See mnc_d2/inference/merge.py. Exit status 1 when a scene's file cannot be read (it is left out,
named on stderr; the others are merged), 2 for a folder without any and for bad options.
"""

import argparse
import sys

from mnc_d2.inference.merge import merge_footprints
from mnc_d2.inference.seams import SEAM_MIN_OVERLAP, SEAM_TOLERANCE_PX
from mnc_d2.utils.logs import configure_cli_logging


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="tools/predict.py --output folder (has buildings/)")
    parser.add_argument("--out", required=True, help="city-wide GeoParquet to write")
    parser.add_argument("--seam-tolerance", type=float, default=SEAM_TOLERANCE_PX, metavar="PX",
                        help="how far short of a scene's edge (in its pixels) a polygon may "
                             "stop and still be a cut piece joined with its neighbour's "
                             f"(default {SEAM_TOLERANCE_PX:g}; 0: only overlapping pieces)")
    parser.add_argument("--seam-overlap", type=float, default=SEAM_MIN_OVERLAP,
                        metavar="FRACTION",
                        help="two scenes' polygons are one building when, where both scenes "
                             "see, they overlap by this fraction of the smaller one "
                             f"(default {SEAM_MIN_OVERLAP:g})")
    args = parser.parse_args(argv)
    if not args.seam_tolerance >= 0:
        parser.error(f"--seam-tolerance {args.seam_tolerance}: use a pixel count >= 0")
    if not 0 < args.seam_overlap <= 1:
        parser.error(f"--seam-overlap {args.seam_overlap}: use a fraction in (0, 1]")
    configure_cli_logging()
    try:
        stats = merge_footprints(args.folder, args.out, args.seam_tolerance, args.seam_overlap)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {stats['written']} buildings from {stats['scenes']} scenes "
          f"({stats['read']} read, {stats['merged_groups']} merged across scene borders)")
    for reason in stats["unreadable"].values():
        print(f"not merged: {reason}", file=sys.stderr)
    return 1 if stats["unreadable"] else 0


if __name__ == "__main__":
    sys.exit(main())
