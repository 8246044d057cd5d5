#!/usr/bin/env python
"""Write a SpaceNet city folder (or a registered dataset name) as COCO instance JSON.

    python tools/convert_spacenet_to_coco.py --aoi-root AOI_2_Vegas_Train --output vegas.json
        [--version spacenet1|spacenet2|spacenet4] [--product RGB-PanSharpen]
        [--labels csv|geojson] [--rle] [--image-root DIR]
    python tools/convert_spacenet_to_coco.py --dataset spacenet2_vegas_train --output train.json
"""

import argparse
import sys

from mnc_d2.data import load_spacenet_dicts  # first: applies the detectron2 shims
from mnc_d2.data.coco_export import write_coco_json
from mnc_d2.data.versions import VERSIONS
from mnc_d2.utils.logs import configure_cli_logging
from detectron2.data import DatasetCatalog  # noqa: E402,I001


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--aoi-root", help="a SpaceNet area folder, e.g. .../AOI_2_Vegas_Train")
    src.add_argument("--dataset", help="a registered Detectron2 dataset name")
    parser.add_argument("--version", choices=sorted(VERSIONS),
                        help="the release (default: inferred from the folder)")
    parser.add_argument("--product", help="default: the release's (e.g. RGB-PanSharpen)")
    parser.add_argument("--labels", choices=("csv", "geojson"),
                        help="default: the release's (csv for SpaceNet 2, geojson for 1 and 4)")
    parser.add_argument("--rle", action="store_true", help="write every mask as RLE")
    parser.add_argument("--image-root", metavar="DIR",
                        help="write image paths relative to DIR (then load with "
                             "load_coco_json(json, DIR)); default: absolute paths")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    configure_cli_logging(fmt="%(levelname)s %(message)s")
    try:
        dicts = (DatasetCatalog.get(args.dataset) if args.dataset
                 else load_spacenet_dicts(args.aoi_root, args.product, args.labels,
                                       version=args.version))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = write_coco_json(dicts, args.output, use_rle=args.rle, image_root=args.image_root)
    print(f"wrote {counts['images']} images and {counts['annotations']} annotations to "
          f"{args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
