#!/usr/bin/env python
"""A web map of a tools/predict.py output folder: footprints coloured by score over the imagery,
a score slider, scene outlines by status; offline (mnc_d2/viewer).

    python tools/view.py OUTPUT [--city city.parquet] [--scene-root DIR] [--basemap URL]
                         [--out SITE/] [--serve [--port 8000]]
"""

import sys

from mnc_d2.viewer.cli import main

if __name__ == "__main__":
    sys.exit(main())
