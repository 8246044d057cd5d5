"""Logging set-up for the command-line tools.

Two things a plain ``logging.basicConfig`` gets wrong here: libraries we call chat at INFO
(pyogrio logs "Created N records" for every GeoJSON written), and under ``tools/train_net.py``
nothing of ``mnc_d2`` reaches the console or ``OUTPUT_DIR/log.txt``, because Detectron2's
``default_setup`` only gives handlers to the ``detectron2`` and ``fvcore`` loggers.
"""

from __future__ import annotations

import logging

# Libraries whose INFO messages are noise in our tools' output.
CHATTY = ("pyogrio", "fiona", "rasterio", "matplotlib", "PIL", "urllib3")


def quiet_third_party(level: int = logging.WARNING) -> None:
    """Raise the CHATTY loggers to ``level``, leaving alone any a user has set explicitly."""
    for name in CHATTY:
        lib = logging.getLogger(name)
        if lib.level == logging.NOTSET:
            lib.setLevel(level)


class RedactURLs(logging.Filter):
    """Drops URL query strings and user:password parts from every record a handler emits
    (GDAL's own messages name the URL it failed on, signed token and all)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from ..inference.sources import redact

        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure_cli_logging(level: int = logging.INFO,
                          fmt: str = "%(levelname)s %(name)s: %(message)s") -> None:
    """Root logging for a tool's ``main`` (no-op on the root if it has handlers already); every
    root handler redacts URLs (:class:`RedactURLs`)."""
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactURLs) for f in handler.filters):
            handler.addFilter(RedactURLs())
    quiet_third_party()


def setup_mnc_logger(output_dir: str | None) -> logging.Logger:
    """Give the ``mnc_d2`` logger Detectron2's handlers: console on the main process, and
    ``output_dir/log.txt`` (``log.txt.rankN`` on other ranks) beside Detectron2's own lines.

    INFO and above; Detectron2's ``setup_logger`` would set DEBUG. Idempotent for the same
    ``output_dir`` (``setup_logger`` is cached on its arguments).
    """
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    logger = setup_logger(output=output_dir or None, distributed_rank=comm.get_rank(),
                          name="mnc_d2", abbrev_name="mnc_d2")
    logger.setLevel(logging.INFO)
    quiet_third_party()
    return logger
