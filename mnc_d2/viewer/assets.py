"""MapLibre GL JS, vendored from the npm registry at install time (``make setup``).

The tarball is fetched with ``npm pack`` (the registry is the only place it comes from), checked
against the integrity hash the registry published for this version, and its built script, style
sheet and licence are copied into ``mnc_d2/viewer/static/vendor/`` (not committed; shipped with
an installed package). Why MapLibre: it draws vector data on the GPU with WebGL 2, needs no
token or server, and reads GeoJSON directly (and PMTiles vector tiles, the way to a city too
large for one GeoJSON); the site is static files a plain web server can host.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

PACKAGE = "maplibre-gl"
VERSION = "4.7.1"
INTEGRITY = "sha512-lgL7XpIwsgICiL82ITplfS7IGwrB1OJIw/pCvprDp2dhmSSEBgmPzYRvwYYYvJGJD7fxUv1Tvpih4nZ6VrLuaA=="
FILES = {"package/dist/maplibre-gl.js": "maplibre-gl.js",
         "package/dist/maplibre-gl.css": "maplibre-gl.css",
         "package/LICENSE.txt": "maplibre-gl.LICENSE.txt"}
VENDOR = Path(__file__).resolve().parent / "static" / "vendor"


class AssetsMissing(RuntimeError):
    """The vendored map library is not installed."""


def vendor_dir() -> Path:
    """The folder holding the vendored files; raises :class:`AssetsMissing` naming the fix."""
    missing = [name for name in FILES.values() if not (VENDOR / name).is_file()]
    if missing:
        raise AssetsMissing(f"{VENDOR} lacks {', '.join(missing)}: vendor MapLibre GL JS "
                            f"{VERSION} with `make setup` (or python -m mnc_d2.viewer.assets; "
                            "needs npm and the npm registry once)")
    return VENDOR


def fetch(dest: Path = VENDOR) -> Path:
    """``npm pack`` the pinned version, check its integrity, extract the files into ``dest``."""
    npm = shutil.which("npm")
    if npm is None:
        raise AssetsMissing("npm is not installed: install Node.js/npm to vendor MapLibre GL JS")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([npm, "pack", f"{PACKAGE}@{VERSION}", "--silent"], cwd=tmp, check=True,
                       capture_output=True, timeout=300)
        tarball = next(Path(tmp).glob("*.tgz"))
        algo, expected = INTEGRITY.split("-", 1)
        digest = base64.b64encode(hashlib.new(algo, tarball.read_bytes()).digest()).decode()
        if digest != expected:
            raise AssetsMissing(f"{tarball.name}: integrity {algo}-{digest} is not the pinned "
                                f"{INTEGRITY}; not vendored")
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as archive:
            for member, name in FILES.items():
                data = archive.extractfile(member).read()
                tmp_file = dest / f".{name}.tmp"
                tmp_file.write_bytes(data)
                tmp_file.replace(dest / name)
    logger.info("MapLibre GL JS %s vendored into %s", VERSION, dest)
    return dest


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fetch()
