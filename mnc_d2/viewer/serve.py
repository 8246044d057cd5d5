"""Serve a viewer site on 127.0.0.1 (static files, HTTP range requests answered by the standard
library's handler for whole files; nothing leaves the machine)."""

from __future__ import annotations

import functools
import http.server
import logging
import threading
from pathlib import Path

logger = logging.getLogger(__name__)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def start(site: str | Path, port: int = 0) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve ``site`` in a background thread; returns the server and its URL."""
    handler = functools.partial(_Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
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
