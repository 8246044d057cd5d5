"""Shared fixtures. Importing mnc_d2 first applies the compatibility shims."""

import time
from pathlib import Path

import pytest

import mnc_d2

mnc_d2.setup()  # shims before any detectron2 submodule import, registrations

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "spacenet_sample"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def spacenet_sample() -> Path:
    """The real SpaceNet tile shipped in ../shared/data (skipped, with the reason, if absent)."""
    if not (SHARED_SAMPLE / "sample_geotiff.tif").exists():
        pytest.skip(f"real SpaceNet sample not found at {SHARED_SAMPLE} (../shared/data is absent)")
    return SHARED_SAMPLE


class _RangeServer:
    """A local HTTP server for a folder: Range requests, bytes sent counted per file, chosen
    files answering 500, the query string (a token) ignored for the lookup but recorded."""

    def __init__(self, root: Path):
        import http.server
        import socket
        import threading

        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def setup(self):
                # a small send buffer: what a client hangs up on is not counted as sent
                self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 14)
                super().setup()

            def do_GET(self):
                path, _, query = self.path.partition("?")
                server.queries.append(query)
                name = path.lstrip("/")
                if name in server.failing:
                    self.send_error(500)
                    return
                if name in server.hanging:  # a server that does not answer in time
                    time.sleep(server.hang_s)
                file = server.root / name
                if not file.is_file():
                    self.send_error(404)
                    return
                data = file.read_bytes()
                spec = self.headers.get("Range")
                if spec:
                    lo, _, hi = spec.removeprefix("bytes=").partition("-")
                    lo, hi = int(lo), min(int(hi) if hi else len(data) - 1, len(data) - 1)
                    body = data[lo:hi + 1]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {lo}-{hi}/{len(data)}")
                else:
                    body = data
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                try:  # count what went out, 16 KB at a time (GDAL hangs up once it has enough)
                    for start in range(0, len(body), 1 << 14):
                        chunk = body[start:start + (1 << 14)]
                        self.wfile.write(chunk)
                        server.sent[name] = server.sent.get(name, 0) + len(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return

        self.root, self.sent, self.failing, self.queries = root, {}, set(), []
        self.hanging, self.hang_s = set(), 6.0
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def served(tmp_path):
    server = _RangeServer(tmp_path)
    yield server
    server.close()
