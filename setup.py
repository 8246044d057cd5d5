#!/usr/bin/env python
"""mnc_d2: Multi-task Network Cascades for SpaceNet building footprints, as a Detectron2 extension.

Detectron2 itself is not on PyPI and is therefore not listed in ``install_requires``: install it
first (``python tools/install_detectron2.py``, or upstream from git), as the README explains.
torch/torchvision are not listed either: install the build that matches your CUDA.
"""

from setuptools import find_packages, setup

setup(
    name="mnc_d2",
    version="0.2.0",
    description="Multi-task Network Cascades (MNC) for building footprints on SpaceNet, "
    "as a Detectron2 extension",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["mnc_d2", "mnc_d2.*"]),
    # the viewer's page and the map library vendored by `make setup` (mnc_d2.viewer.assets)
    package_data={"mnc_d2.viewer": ["static/*.html", "static/*.js", "static/*.css",
                                    "static/vendor/*"]},
    python_requires=">=3.9",
    install_requires=[
        "numpy>=1.23",
        "pycocotools>=2.0.6",
        "rasterio>=1.3",
        "shapely>=2.0",
        "geopandas>=0.14",
        "pyproj>=3.4",
        "pandas>=1.5",
        "opencv-python-headless>=4.6",
        "tqdm>=4.60",
        "fvcore>=0.1.5",
        "iopath>=0.1.7",
        "PyYAML>=5.4",
        "tabulate>=0.9",
        "pyarrow>=14",
        "ray[data]>=2.9",
        "pystac>=1.10",
        "rio-tiler>=6",
    ],
    extras_require={"test": ["pytest>=7"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: GIS",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
