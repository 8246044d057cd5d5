"""Tool logging: third-party chatter quieted, mnc_d2's logger written beside Detectron2's."""

import logging

import pytest
from shapely.geometry import box

from mnc_d2.formats.geojson import write_geojson
from mnc_d2.utils.logs import CHATTY, configure_cli_logging, quiet_third_party, setup_mnc_logger


@pytest.fixture
def restore_levels():
    saved = {name: logging.getLogger(name).level for name in (*CHATTY, "mnc_d2")}
    ours = logging.getLogger("mnc_d2")
    handlers, propagate = list(ours.handlers), ours.propagate
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)
    ours.handlers[:], ours.propagate = handlers, propagate  # other tests' caplog needs propagation


def _pyogrio_records(caplog, tmp_path, name):
    caplog.clear()
    write_geojson(tmp_path / name, [box(0, 0, 1, 1)], "EPSG:32616", [{"score": 0.9}])
    return [r for r in caplog.records if r.name.startswith("pyogrio")]


def test_cli_logging_drops_pyogrio_info_per_file_written(tmp_path, caplog, restore_levels):
    logging.getLogger("pyogrio").setLevel(logging.NOTSET)
    caplog.set_level(logging.INFO)
    # Without the set-up, every GeoJSON written logs "Created N records" at INFO.
    assert any("Created" in r.getMessage() for r in _pyogrio_records(caplog, tmp_path, "a.geojson"))
    configure_cli_logging()
    assert _pyogrio_records(caplog, tmp_path, "b.geojson") == []


def test_quiet_third_party_keeps_a_level_the_user_set(restore_levels):
    logging.getLogger("rasterio").setLevel(logging.DEBUG)
    logging.getLogger("pyogrio").setLevel(logging.NOTSET)
    quiet_third_party()
    assert logging.getLogger("rasterio").level == logging.DEBUG
    assert logging.getLogger("pyogrio").level == logging.WARNING


def test_mnc_logger_writes_info_not_debug_to_the_run_log(tmp_path, restore_levels):
    setup_mnc_logger(str(tmp_path))
    log = logging.getLogger("mnc_d2.some.module")
    log.info("kept line %d", 1)
    log.debug("dropped line")
    for handler in logging.getLogger("mnc_d2").handlers:
        handler.flush()
    text = (tmp_path / "log.txt").read_text()
    assert "mnc_d2.some.module INFO: kept line 1" in text
    assert "dropped line" not in text
