#!/usr/bin/env python
"""Merge a prediction folder's per-scene GeoParquet files into one city-wide GeoParquet.

    python tools/merge_footprints.py OUTPUT --out city.parquet

Buildings of different scenes that overlap (any overlap of positive area) are unioned, rows are
ordered spatially (Hilbert), memory stays bounded by the seams being merged, and the file is
written atomically. See mnc_d2/inference/merge.py. Exit status 1 when a scene's file cannot be
read (it is left out, named on stderr; the others are merged), 2 for a folder without any.
"""

import argparse
import sys

from mnc_d2.inference.merge import merge_footprints
from mnc_d2.utils.logs import configure_cli_logging


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="tools/predict.py --output folder (has buildings/)")
    parser.add_argument("--out", required=True, help="city-wide GeoParquet to write")
    args = parser.parse_args(argv)
    configure_cli_logging()
    try:
        stats = merge_footprints(args.folder, args.out)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {stats['written']} buildings from {stats['scenes']} scenes "
          f"({stats['read']} read, {stats['merged_groups']} unioned across scene borders)")
    for reason in stats["unreadable"].values():
        print(f"not merged: {reason}", file=sys.stderr)
    return 1 if stats["unreadable"] else 0


if __name__ == "__main__":
    sys.exit(main())
