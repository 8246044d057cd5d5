"""``tools/view.py``: build the viewer site of a prediction folder, optionally serve it."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile

from ..utils.logs import configure_cli_logging
from .assets import AssetsMissing
from .site import ViewerInputError, build_site


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="the --output folder of tools/predict.py")
    parser.add_argument("--city", help="a merged city GeoParquet (tools/merge_footprints.py) to "
                                       "draw instead of the per-scene files")
    parser.add_argument("--scene-root", help="folder where the scenes are now, when the "
                                             "manifest's paths moved, or a local copy of "
                                             "scenes read from signed URLs (matched by file "
                                             "name)")
    parser.add_argument("--truth", nargs="+", metavar="FILE",
                        help="truth: SpaceNet CSVs (pixel coordinates, by ImageId) or GeoJSON / "
                             "GeoParquet; TP / FP / FN at the run's threshold, matched as "
                             "tools/score.py does (per scene; with --city over the merged "
                             "city, map truth only)")
    parser.add_argument("--basemap", help="XYZ tile URL template of an optional basemap "
                                          "(https://.../{z}/{x}/{y}.png); none by default")
    parser.add_argument("--out", help="write the site here (default: a temporary folder, "
                                      "with --serve)")
    parser.add_argument("--serve", action="store_true", help="serve the site on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--overview-px", type=int, default=1024,
                        help="long side of each scene's overview image")
    parser.add_argument("--vector-tiles", choices=("auto", "always", "never"), default="auto",
                        help="footprints as vector tiles (auto: from 20,000 buildings on) "
                             "instead of one GeoJSON")
    args = parser.parse_args(argv)
    configure_cli_logging()
    if not args.out and not args.serve:
        parser.error("give --out SITE/, --serve, or both")
    if args.overview_px < 64:  # below this an overview shows nothing (0 wrote a 1-pixel image)
        parser.error(f"--overview-px {args.overview_px} must be at least 64")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} must be in 0-65535 (0: any free port)")
    site = args.out or tempfile.mkdtemp(prefix="mnc_d2_viewer_")
    try:
        meta = build_site(args.folder, site, args.city, args.scene_root, args.basemap,
                          args.overview_px, args.truth, args.vector_tiles)
    except (ViewerInputError, AssetsMissing, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = meta.get("truth_counts")
    against = (f"; against the truth TP {counts['TP']}, FP {counts['FP']}, FN {counts['FN']}"
               if counts else "")
    logging.getLogger(__name__).info("%d buildings (%d at or above the run's threshold %.2f%s) "
                                     "in %s", meta["buildings"],
                                     meta["scores_at_or_above_threshold"], meta["threshold"],
                                     against, site)
    if args.serve:
        from .serve import serve

        serve(site, args.port)
    else:  # opened from disk, a browser refuses the page its data files
        logging.getLogger(__name__).info(
            "open it through a web server, not from disk: python3 -m http.server 8000 "
            "--directory %s, then http://127.0.0.1:8000/ (or add --serve for full-resolution "
            "imagery)", site)
    return 0
