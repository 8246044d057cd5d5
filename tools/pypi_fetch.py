"""Fetch one pinned file from a PEP 503 package index (PyPI by default), sha256-checked.

Used where pip itself cannot help: the detectron2 0.6 sdist (pip refuses to build it) and the
solaris 0.4.0 wheel (its metadata is rejected by current pip). Standard library only, so the
detectron2 installer can load this file before detectron2 (and so mnc_d2) is importable.
"""

from __future__ import annotations

import hashlib
import html.parser
import logging
import os
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

logger = logging.getLogger(__name__)


class _LinkParser(html.parser.HTMLParser):
    """Collect the hrefs of a PEP 503 'simple' index page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.links.extend(v for k, v in attrs if k == "href" and v)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_url(project: str, filename: str, index_url: str | None = None) -> str:
    """URL of ``filename`` on the index page of ``project`` ($PIP_INDEX_URL or PyPI)."""
    index_url = index_url or os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple")
    page_url = index_url.rstrip("/") + f"/{project}/"
    with urllib.request.urlopen(page_url, timeout=120) as resp:
        parser = _LinkParser()
        parser.feed(resp.read().decode("utf-8", "replace"))
    for link in parser.links:
        if urllib.parse.urlparse(link).path.endswith("/" + filename):
            return urllib.parse.urljoin(page_url, link.split("#", 1)[0])
    raise RuntimeError(f"{filename} is not listed at {page_url}; set PIP_INDEX_URL to an index "
                       "that has it")


def fetch_pinned(project: str, filename: str, sha256: str, cache_dir: Path) -> Path:
    """Download ``filename`` of ``project`` into ``cache_dir`` once; verify its sha256."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / filename
    if target.exists() and sha256_of(target) == sha256:
        return target
    url = file_url(project, filename)
    logger.info("downloading %s", url)
    tmp = target.with_name(target.name + ".part")
    with urllib.request.urlopen(url, timeout=300) as resp, open(tmp, "wb") as out:
        shutil.copyfileobj(resp, out)
    got = sha256_of(tmp)
    if got != sha256:
        tmp.unlink()
        raise RuntimeError(f"sha256 of {url} is {got}, expected {sha256}; refusing it")
    tmp.replace(target)
    return target
