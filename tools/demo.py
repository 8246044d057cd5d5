#!/usr/bin/env python
"""The README's main job (`make demo`): synthetic SpaceNet-layout data, MNC training on CPU,
SpaceNet evaluation, prediction on held-out GeoTIFFs, summary. See mnc_d2/demo.py."""

import sys

import mnc_d2

mnc_d2.setup()  # shims and registrations before anything else of detectron2
from mnc_d2.demo import main

if __name__ == "__main__":
    sys.exit(main())
