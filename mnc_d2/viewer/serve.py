"""Serve a viewer site on 127.0.0.1: its static files, and full-resolution imagery tiles cut on
request from each scene's GeoTIFF / COG (``/tiles/<scene>/<z>/<x>/<y>.png``, web mercator,
rio-tiler; the stretch of the scene's overview). Nothing leaves the machine except the reads
of remote scenes rasterio makes (only the windows a tile needs)."""

from __future__ import annotations

import functools
import http.server
import json
import logging
import re
import threading
from pathlib import Path

from .mosaic import MOSAIC, composite, scene_tile_rgba, touching
from .mosaic import png as encode_png

logger = logging.getLogger(__name__)

TILE = re.compile(r"^/tiles/(?P<scene>[^/]+)/(?P<z>\d+)/(?P<x>\d+)/(?P<y>\d+)\.png$")


def render_tile(source: dict, z: int, x: int, y: int) -> bytes | None:
    """PNG of tile z/x/y of one scene (``source``: path, bands, stretch), None outside it."""
    rgba = scene_tile_rgba(source, z, x, y)
    return encode_png(rgba) if rgba is not None else None


class _Handler(http.server.SimpleHTTPRequestHandler):
    sources: dict = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        match = TILE.match(self.path.split("?", 1)[0])
        if match is None:
            return super().do_GET()
        z, x, y = int(match["z"]), int(match["x"]), int(match["y"])
        png = None
        try:
            if match["scene"] == MOSAIC:  # a city: every scene under the tile, composited
                rgba = composite(touching(self.sources, z, x, y), z, x, y)
                png = encode_png(rgba) if rgba is not None else None
            elif match["scene"] in self.sources:
                png = render_tile(self.sources[match["scene"]], z, x, y)
        except Exception as exc:  # a tile that fails is empty; the map goes on
            logger.warning("tile %s: %s", self.path, exc)
        self.server.tiles_served.append((self.path, 200 if png else 204))
        if png is None:
            self.send_response(204)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(png)))
        self.end_headers()
        self.wfile.write(png)


def start(site: str | Path, port: int = 0) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve ``site`` in a background thread; returns the server and its URL."""
    site = Path(site)
    sources_file = site / "data" / "sources.json"
    sources = json.loads(sources_file.read_text()) if sources_file.is_file() else {}
    handler = type("SiteHandler", (_Handler,), {"sources": sources})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", port), functools.partial(handler, directory=str(site)))
    server.tiles_served = []  # (path, status) of every tile request, for logs and tests
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def serve(site: str | Path, port: int = 8000) -> None:
    """Serve ``site`` until interrupted."""
    server, url = start(site, port)
    logger.info("viewer at %s (Ctrl-C stops)", url)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
