"""tools/view.py: the web map of a prediction folder, checked in a real browser (Debian's
headless chromium driven by selenium): no console error, no request leaving localhost, the
building count and the score slider, a click on a known building, failed scenes marked."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely

from mnc_d2.inference.scenes import SceneRow, append_manifest, write_buildings_parquet
from mnc_d2.synthetic.spacenet2 import STYLES, render_scene, tile_transform, to_dn
from mnc_d2.viewer.site import ViewerInputError, build_site

SCORES = [0.30, 0.55, 0.72, 0.91]


def _prediction_folder(root: Path) -> Path:
    """Two scenes with four buildings each (known scores), one failed scene."""
    out = root / "pred"
    (root / "scenes").mkdir(parents=True)
    rows = []
    for k in range(2):
        image, _, _ = render_scene(np.random.default_rng(k), STYLES["vegas"], size=160)
        path = root / "scenes" / f"s{k}.tif"
        transform = tile_transform(STYLES["vegas"], 21 + k, size=160)
        with rasterio.open(path, "w", driver="GTiff", height=160, width=160, count=3,
                           dtype="uint16", crs="EPSG:4326", transform=transform) as dst:
            dst.write(to_dn(image)[[4, 2, 1]])
        polys = [shapely.box(*(transform @ (20 + 35 * j, 60)), *(transform @ (45 + 35 * j, 30)))
                 for j in range(4)]
        write_buildings_parquet(out / "buildings" / f"s{k}.parquet", f"s{k}", polys, SCORES,
                                "EPSG:4326")
        rows.append(SceneRow(f"s{k}", str(path), "ok", 4))
    rows.append(SceneRow("lost", str(root / "scenes" / "lost.tif"), "failed",
                         error="FileNotFoundError: lost.tif does not exist"))
    append_manifest(out, rows)
    (out / "run.json").write_text(json.dumps({"score_thresh": 0.5, "config": "INPUT:\n  BANDS: "
                                              "[1, 2, 3]\n"}))
    return out


def test_bad_folders_say_why(tmp_path, capsys):
    with pytest.raises(ViewerInputError, match="not a tools/predict.py output folder"):
        build_site(tmp_path, tmp_path / "site")
    folder = _prediction_folder(tmp_path)
    from mnc_d2.viewer.cli import main as view_main

    for bad, said in ((["--overview-px", "0"], "--overview-px 0 must be at least 64"),
                      (["--port", "70000"], "--port 70000 must be in 0-65535")):
        with pytest.raises(SystemExit) as stop:
            view_main([str(folder), "--out", str(tmp_path / "never"), *bad])
        assert stop.value.code == 2 and said in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
    import geopandas as gpd

    frame = gpd.read_parquet(folder / "buildings" / "s0.parquet")
    frame.set_crs(None, allow_override=True).to_parquet(tmp_path / "nocrs.parquet")
    with pytest.raises(ViewerInputError, match="nocrs.parquet has no CRS"):
        build_site(folder, tmp_path / "site", city=str(tmp_path / "nocrs.parquet"))
    # a folder of the user's own as --out: refused, nothing in it touched; an earlier site is
    # rebuilt in place
    own = tmp_path / "own"
    (own / "imagery").mkdir(parents=True)
    (own / "imagery" / "mine.tif").write_text("x")
    (own / "notes.txt").write_text("x")
    with pytest.raises(ViewerInputError, match=r"--out .*own exists and is not a site of "
                                               r"tools/view.py \(it holds imagery, notes.txt\)"):
        build_site(folder, own)
    assert sorted(p.name for p in own.rglob("*")) == ["imagery", "mine.tif", "notes.txt"]
    (own / "notes.txt").unlink()  # only a folder named like a site's: still not a site
    with pytest.raises(ViewerInputError, match=r"\(it holds imagery\)"):
        build_site(folder, own)
    build_site(folder, tmp_path / "again")
    build_site(folder, tmp_path / "again")
    (tmp_path / "notparquet.parquet").write_text("x")
    with pytest.raises(ViewerInputError, match="--city .*notparquet.parquet cannot be read as "
                       "GeoParquet .*tools/merge_footprints.py"):
        build_site(folder, tmp_path / "site", city=str(tmp_path / "notparquet.parquet"))
    # scenes moved: --scene-root finds them by name; the map still builds without them
    moved = tmp_path / "moved"
    shutil.move(str(tmp_path / "scenes"), moved)
    meta = build_site(folder, tmp_path / "site2")
    assert [s["corners"] for s in meta["scenes"]] == [None, None, None]
    meta = build_site(folder, tmp_path / "site3", scene_root=str(moved))
    assert [s["corners"] is not None for s in meta["scenes"]] == [True, True, False]
    empty = tmp_path / "empty"
    append_manifest(empty, [])
    (empty / "run.json").write_text(json.dumps({"score_thresh": 0.5}))
    assert build_site(empty, tmp_path / "site4")["empty_reason"] == "the run has no scenes"


def _browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        message = ("the viewer's browser tests need Debian's chromium and chromium-driver "
                   "(apt-get install chromium chromium-driver)")
        if os.environ.get("MNC_D2_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--enable-unsafe-swiftshader",
                "--window-size=1000,800", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def _wait(browser, script: str, timeout: float = 60.0):
    end = time.time() + timeout
    while time.time() < end:
        value = browser.execute_script(script)
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for: {script}")


def _click_building_3_of_s1(browser, root: Path) -> str:
    """Click the middle of building 3 of scene s1 (:func:`_prediction_folder`) on the map;
    returns the popup's text."""
    from selenium.webdriver.common.action_chains import ActionChains

    with rasterio.open(root / "scenes" / "s1.tif") as src:
        lon, lat = src.transform @ (20 + 35 * 3 + 12, 45)
    x, y = browser.execute_script(
        f"const p = window.viewerMap.project([{lon}, {lat}]); return [p.x, p.y]")
    canvas = browser.find_element("css selector", ".maplibregl-canvas")
    ActionChains(browser).move_to_element_with_offset(
        canvas, int(x - canvas.size["width"] / 2), int(y - canvas.size["height"] / 2)
    ).click().perform()
    return _wait(browser, "return window.viewerState.popup")


def _cells_drawn_zoomed_out(browser) -> list[int]:
    """Zoom the page out to 14 at its centre; the count of each density cell drawn there."""
    center = browser.execute_script("return window.viewerMap.getCenter().toArray()")
    browser.execute_script(f"window.viewerMap.jumpTo({{center: {center}, zoom: 14}})")
    _wait(browser, "return window.viewerMap.loaded()")
    return browser.execute_script(
        "const f = window.viewerMap.queryRenderedFeatures({layers: ['density']});"
        "const seen = new Map(f.map(x => [JSON.stringify(x.geometry.coordinates), "
        "x.properties.n])); return [...seen.values()]")


def _check_density(browser, site: Path) -> None:
    """A city's page zoomed out (zoom 14, below the buildings' 16) draws the density cells
    and no building; the cells hold exactly the buildings at the slider's threshold."""
    cells = json.loads((site / "data" / "density.json").read_text())["cells"]
    assert cells and sum(c[3] for c in cells) == 8
    for threshold, expected in ((0.5, 6), (0.8, 2), (0.0, 8), (0.95, 0)):
        browser.execute_script(f"window.viewerSetThreshold({threshold})")
        shown = browser.execute_script("return window.viewerState.density")
        assert shown["mode"] == "buildings" and shown["total"] == expected, shown
        assert (shown["cells"] > 0) == (expected > 0), shown
    browser.execute_script("window.viewerSetThreshold(0.5)")
    drawn = _cells_drawn_zoomed_out(browser)
    assert sum(drawn) == 6, drawn
    assert not browser.execute_script(
        "return window.viewerMap.queryRenderedFeatures({layers: ['buildings-fill']}).length")
    assert not browser.find_element("id", "density-legend").get_attribute("hidden")
    # zoomed in to where the buildings are drawn, the cells are not
    browser.execute_script("window.viewerMap.jumpTo({zoom: 17})")
    _wait(browser, "return window.viewerMap.loaded()")
    assert not browser.execute_script(
        "return window.viewerMap.queryRenderedFeatures({layers: ['density']}).length")


@pytest.mark.parametrize("footprints", ["never", "always"])
def test_the_map_in_a_real_browser(tmp_path, footprints):
    """One GeoJSON (a run's default up to 20,000 buildings) and vector tiles (a city's): the
    same counts, filter, click and offline behaviour."""
    from mnc_d2.viewer.serve import start

    folder = _prediction_folder(tmp_path)
    site = tmp_path / "site"
    meta = build_site(folder, site, vector_tiles=footprints)
    kind = "tiles" if footprints == "always" else "geojson"
    assert meta["footprints"]["kind"] == kind
    assert (site / "data" / "buildings.geojson").exists() == (kind == "geojson")
    assert any((site / "data" / "footprints").rglob("*.pbf")) == (kind == "tiles")
    server, url = start(site)
    browser = _browser()
    try:
        browser.get(url)
        _wait(browser, "return window.viewerState && window.viewerState.ready")
        state = browser.execute_script("return window.viewerState")
        assert state["footprints"] == kind
        assert state["total"] == 8
        assert state["count"] == 2 * sum(s >= 0.5 for s in SCORES) == 6
        assert "6 buildings shown" in browser.find_element("id", "count").text
        drawn = browser.execute_script(
            "const f = window.viewerMap.queryRenderedFeatures({layers: ['buildings-fill']});"
            "return [...new Set(f.map(x => x.properties.scene + '/' + x.properties.building_id))]"
            ".length")
        assert drawn == 6
        browser.execute_script("window.viewerSetThreshold(0.8)")
        assert browser.execute_script("return window.viewerState.count") == 2
        assert "2 buildings shown" in browser.find_element("id", "count").text
        _wait(browser, "return window.viewerMap.loaded()")
        assert browser.execute_script(
            "return window.viewerMap.queryRenderedFeatures({layers: ['buildings-fill']})"
            ".filter(f => f.properties.score >= 0.8).length > 0 && window.viewerMap"
            ".queryRenderedFeatures({layers: ['buildings-fill']}).every(f => f.properties.score"
            " >= 0.8)")
        # a click on building 3 of scene s1 (score 0.91) shows its score
        popup = _click_building_3_of_s1(browser, tmp_path)
        assert "scene s1, building 3, score 0.9100" in popup
        assert "lost: failed (FileNotFoundError" in browser.find_element("id", "scenes").text
        if kind == "tiles":  # zoomed out, where no building is drawn: the density cells
            _check_density(browser, site)
        else:
            assert browser.find_element("id", "density-legend").get_attribute("hidden")
        requests = [json.loads(entry["message"])["message"] for entry in
                    browser.get_log("performance")]
        urls = [m["params"]["request"]["url"] for m in requests
                if m["method"] == "Network.requestWillBeSent"]
        assert urls and all(u.startswith((url, "data:", "blob:")) for u in urls), urls
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        # zoomed in (these 48 m scenes fill the window at zoom ~20), the server cuts
        # full-resolution tiles from the scenes themselves
        assert browser.execute_script("return window.viewerState.tiled")
        zoomed = [p for p, status in server.tiles_served
                  if status == 200 and int(p.split("/")[3]) >= 14]
        if kind == "geojson":  # an image per scene, and each scene's own tiles
            assert {p.split("/")[2] for p in zoomed} == {"s0", "s1"}, server.tiles_served
        else:  # a city: one pre-rendered pyramid, then the server's mosaic of the scenes
            assert meta["overview"]["tiles"] > 0
            assert any((site / "data" / "overview").rglob("*.png"))
            assert not (site / "imagery").exists()
            assert {p.split("/")[2] for p in zoomed} == {"_mosaic"}, server.tiles_served
        shot = os.environ.get("MNC_D2_VIEWER_SCREENSHOT")
        if shot and kind == "geojson":
            browser.save_screenshot(shot)
    finally:
        browser.quit()
        server.shutdown()


@pytest.mark.parametrize("footprints", ["never", "always"])
def test_truth_is_matched_as_the_scorer_matches(tmp_path, footprints):
    """TP / FP / FN of the map equal tools/score.py's on the same polygons (SpaceNet rules), at
    the run's threshold and at any other the slider sets."""
    from mnc_d2.evaluation.spacenet_metric import score_csv
    from mnc_d2.formats.spacenet_csv import write_proposal_csv
    from mnc_d2.viewer.serve import start

    folder = _prediction_folder(tmp_path)
    # scene s0 also has a 3 x 3 px building above the threshold: under the rules' 20 px, neither
    # TP nor FP for the scorer, and "ignored" on the map
    speck = shapely.box(140, 140, 143, 143)
    with rasterio.open(tmp_path / "scenes" / "s0.tif") as src:
        transform = src.transform
    polys = [shapely.box(*(transform @ (20 + 35 * j, 60)), *(transform @ (45 + 35 * j, 30)))
             for j in range(4)] + [shapely.box(*(transform @ (140, 143)),
                                               *(transform @ (143, 140)))]
    write_buildings_parquet(folder / "buildings" / "s0.parquet", "s0", polys, SCORES + [0.95],
                            "EPSG:4326")
    # each scene's buildings in its pixels, with their scores (the scorer's proposals)
    pix = [shapely.box(20 + 35 * j, 30, 45 + 35 * j, 60) for j in range(4)]
    all_props = {f"s{k}": [(p, s) for p, s in zip(pix, SCORES)] + (
        [(speck, 0.95)] if k == 0 else []) for k in range(2)}
    # truth: buildings 1 and 3 exactly, building 2 shifted away (its prediction an FP), and
    # one building nothing found (FN); building 0 (0.30, below the run's threshold) overlaps
    # none (the Geo column holds a polygon: the tester drops a row with POLYGON EMPTY anywhere)
    kept = [pix[1], pix[3], shapely.box(100, 100, 130, 130)]
    truth = tmp_path / "truth.csv"
    truth.write_text("ImageId,BuildingId,PolygonWKT_Pix,PolygonWKT_Geo\n" + "\n".join(
        f's{k},{i},"{t.wkt}","{t.wkt}"' for k in range(2) for i, t in enumerate(kept)) + "\n")

    def scored(threshold: float) -> tuple[int, int, int]:
        """tools/score.py's counts with the buildings at or above ``threshold``."""
        write_proposal_csv(tmp_path / "props.csv", {
            scene: [(p, s) for p, s in found if s >= threshold] for scene, found in
            all_props.items()})
        result = score_csv(str(truth), str(tmp_path / "props.csv"), group_by="none")
        return result.overall.tp, result.overall.fp, result.overall.fn

    assert scored(0.5) == (4, 2, 2)
    meta = build_site(folder, tmp_path / "site", truth=[str(truth)], vector_tiles=footprints)
    assert meta["truth_counts"] == {"TP": 4, "FP": 2, "FN": 2} and meta["truth_kept"] == 6
    if footprints == "always":  # a city's: truth as vector tiles too, misses by grid cell
        _check_city_truth(tmp_path, meta, scored)
        return
    buildings = json.loads((tmp_path / "site" / "data" / "buildings.geojson").read_text())
    # each building's match holds at any threshold at or below its score
    assert sorted(f["properties"]["match"] for f in buildings["features"]) == [
        "FP", "FP", "FP", "FP", "TP", "TP", "TP", "TP", "ignored"]
    truth_site = json.loads((tmp_path / "site" / "data" / "truth.geojson").read_text())
    assert sorted(f["properties"]["matched_score"] for f in truth_site["features"]) == [
        -1, -1, 0.55, 0.55, 0.91, 0.91]
    # each match's shape (tools/score.py --polygon-metrics): the TPs are the truth exactly; the
    # FPs overlap no truth
    shapes = {f["properties"]["match"]: {k: f["properties"][k] for k in (
        "iou", "ciou", "polis_m", "mta_deg", "vertices", "truth_vertices")}
        for f in buildings["features"]}
    assert shapes["TP"] == {"iou": 1.0, "ciou": 1.0, "polis_m": 0.0, "mta_deg": 0.0,
                            "vertices": 4, "truth_vertices": 4}
    assert shapes["FP"] == {"iou": 0.0, "ciou": None, "polis_m": None, "mta_deg": None,
                            "vertices": None, "truth_vertices": None}
    assert set(shapes["ignored"].values()) == {None}
    assert meta["truth_shape"]["pairs"] == 4 and meta["truth_shape"]["ciou"] == 1.0
    server, url = start(tmp_path / "site")
    browser = _browser()
    try:
        browser.get(url)
        _wait(browser, "return window.viewerState && window.viewerState.ready")
        assert "TP 4, FP 2, FN 2" in browser.find_element("id", "truth").text
        assert "shape of the 4 matches at the run's threshold 0.50: mean IoU 1.000, C-IoU " \
            "1.000, PoLiS 0.00 m, max tangent angle error 0.0\u00b0, vertices 1.00x the " \
            "truth's" in browser.find_element("id", "truth").text
        # at any threshold the slider sets, the scorer's counts at that threshold
        for threshold in (0.2, 0.6, 0.95):
            browser.execute_script(f"window.viewerSetThreshold({threshold})")
            tp, fp, fn = scored(threshold)
            assert browser.execute_script("return window.viewerState.truth") == {
                "TP": tp, "FP": fp, "FN": fn}, threshold
            assert f"TP {tp}, FP {fp}, FN {fn} (SpaceNet rules, at the threshold " \
                f"{threshold:.2f})" in browser.find_element("id", "truth").text
        assert scored(0.2) == (4, 4, 2) and scored(0.6) == (2, 2, 4)
        # the truth drawn green where a building at or above the threshold matched it
        colour = browser.execute_script(
            "return JSON.stringify(window.viewerMap.getPaintProperty('truth', 'line-color'))")
        assert "0.95" in colour and "matched_score" in colour, colour
        browser.execute_script("window.viewerSetThreshold(0.5)")
        # a click on building 3 of scene s1 (a TP) shows its shape against its truth
        popup = _click_building_3_of_s1(browser, tmp_path)
        assert "score 0.9100" in popup and "; TP: IoU 1.000, C-IoU 1.000, PoLiS 0.00 m, max " \
            "tangent angle error 0.0\u00b0, 4 vertices (truth 4)" in popup, popup
        legend = browser.find_element("id", "truth-legend")
        assert legend.is_displayed() and "at the slider's threshold: TP FP FN (truth, " \
            "dashed)" in legend.text
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        browser.quit()
        server.shutdown()


def _check_city_truth(root: Path, meta: dict, scored) -> None:
    """A city's site with truth (vector tiles): no truth GeoJSON; the truth drawn from its
    tiles; zoomed out, the misses per cell add up to the scorer's FN at any threshold."""
    site = root / "site"
    assert meta["truth_footprints"]["kind"] == "tiles" and meta["misses"]["cells"] > 0
    assert not (site / "data" / "truth.geojson").exists()
    assert any((site / "data" / "truth").rglob("*.pbf"))
    from mnc_d2.viewer.serve import start

    server, url = start(site)
    browser = _browser()
    try:
        browser.get(url)
        _wait(browser, "return window.viewerState && window.viewerState.ready")
        assert "TP 4, FP 2, FN 2" in browser.find_element("id", "truth").text
        # the 48 m scenes fill the window beyond zoom 16: the truth from its tiles
        _wait(browser, "return window.viewerMap.queryRenderedFeatures({layers: ['truth']})"
                       ".length > 0")
        browser.execute_script("window.viewerSetDensityMode('misses')")
        for threshold in (0.2, 0.5, 0.6, 0.95):
            browser.execute_script(f"window.viewerSetThreshold({threshold})")
            fn = scored(threshold)[2]
            shown = browser.execute_script("return window.viewerState.density")
            assert shown["mode"] == "misses" and shown["total"] == fn, (threshold, shown)
            assert browser.execute_script("return window.viewerState.truth")["FN"] == fn
        browser.execute_script("window.viewerSetThreshold(0.5)")
        drawn = _cells_drawn_zoomed_out(browser)
        assert sum(drawn) == 2, drawn
        assert "misses (FN)" in browser.find_element("id", "density-legend").text
        browser.execute_script("window.viewerSetDensityMode('buildings')")
        assert browser.execute_script("return window.viewerState.density.total") == \
            browser.execute_script("return window.viewerState.count") == 7
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        browser.quit()
        server.shutdown()


def test_a_page_that_cannot_read_its_files_says_why(tmp_path):
    """Opened from disk (a double click on index.html), a browser refuses the page its data
    files: the panel says how to serve the folder instead of showing a blank map. A site
    missing a file (a partial copy on a static host) names the file."""
    from mnc_d2.viewer.serve import start

    site = tmp_path / "site"
    build_site(_prediction_folder(tmp_path), site)
    browser = _browser()
    try:
        browser.get((site / "index.html").as_uri())
        message = _wait(browser, "return window.viewerState && window.viewerState.error")
        assert "opened from disk" in message
        assert f"python3 -m http.server 8000 --directory {site}/" in message
        assert browser.find_element("id", "error").text == message
        assert not browser.find_element("id", "truth-legend").is_displayed()
    finally:
        browser.quit()
    (site / "data" / "buildings.geojson").unlink()
    server, url = start(site)
    browser = _browser()
    try:
        browser.get(url)
        message = _wait(browser, "return window.viewerState && window.viewerState.error")
        assert "cannot read data/buildings.geojson (HTTP 404)" in message
        assert not browser.execute_script("return window.viewerState.ready")
    finally:
        browser.quit()
        server.shutdown()


@pytest.mark.parametrize("how", ["nodata", "internal_mask"])
def test_a_nodata_collar_is_transparent_and_takes_no_share_of_the_stretch(tmp_path, how):
    """An orthorectified scene has a collar without data (a nodata value, or GDAL's internal
    mask as in JPEG-compressed COGs). Its overview is transparent there (drawn black, it hid the
    neighbouring scenes and the basemap) and its stretch comes from the valid pixels (the
    collar's zeros set the low end, washing the imagery out); the same for predict.py's PNG,
    which outlines holes too."""
    from mnc_d2.inference.predictor import ScenePrediction, _write_overlay

    folder = _prediction_folder(tmp_path)
    path = tmp_path / "scenes" / "s0.tif"
    with rasterio.open(path) as src:
        profile, data = src.profile, src.read()
    collar = np.zeros(data.shape[1:], dtype=bool)
    collar[:, :64] = True  # 40% of the scene
    data[:, collar] = 0
    kwargs = {"nodata": 0} if how == "nodata" else {}
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", **{**profile, **kwargs}) as dst:
            dst.write(data)
            if how == "internal_mask":
                dst.write_mask(np.where(collar, 0, 255).astype(np.uint8))
    valid = data[:, ~collar].astype(np.float32)
    low = [np.percentile(band, 2) for band in valid]
    assert min(low) > 100  # the valid pixels' low end is far from the collar's 0
    build_site(folder, tmp_path / "site")
    import cv2

    image = cv2.imread(str(tmp_path / "site" / "imagery" / "s0.png"), cv2.IMREAD_UNCHANGED)
    assert image.shape == (160, 160, 4)
    assert (image[collar, 3] == 0).all() and (image[~collar, 3] == 255).all()
    # the 2-98% stretch of the valid pixels: about 2% of them at 0 in each band
    assert all(0.01 < (image[~collar, c] == 0).mean() < 0.05 for c in range(3))
    # the other scene has no collar: opaque
    other = cv2.imread(str(tmp_path / "site" / "imagery" / "s1.png"), cv2.IMREAD_UNCHANGED)
    assert (other[..., 3] == 255).all()
    # the PNG draws each building's holes too (a courtyard)
    courtyard = shapely.box(80, 40, 140, 100).difference(shapely.box(100, 60, 120, 80))
    with rasterio.open(path) as src:
        pred = ScenePrediction(str(path), "s0", [courtyard], [0.9], src.crs, src.transform,
                               160, 160)
    _write_overlay(pred, tmp_path / "overlay.png", None)
    overlay = cv2.imread(str(tmp_path / "overlay.png"))
    drawn = (overlay == (0, 255, 255)).all(axis=-1)  # yellow, BGR
    assert drawn[40, 110] and drawn[100, 110] and drawn[60, 110] and drawn[80, 110]
    assert not drawn[70, 110]
    drawn[30:111, 70:151] = False
    valid = ~collar & ~drawn
    assert all(0.01 < (overlay[valid, c] == 0).mean() < 0.05 for c in range(3))


def test_density_cells_hold_each_building_once_where_its_point_lies():
    """The zoomed-out density of a city: each building counted once, in the web-mercator cell
    holding its representative point (also for an L whose centroid lies outside it), each
    cell's scores sorted, the cells' counts adding up to the buildings."""
    import geopandas as gpd

    from mnc_d2.viewer.density import density_cells
    from mnc_d2.viewer.tiles import HALF

    zoom = 18
    size = 2 * HALF / 2 ** zoom
    # cell (x, y) spans x*size - HALF .. (x+1)*size - HALF, HALF - (y+1)*size .. HALF - y*size
    x0, y0 = 45000, 103000
    west, north = x0 * size - HALF, HALF - y0 * size

    def box(i, j, a, b, c, d):  # a box at (a..c, b..d) metres inside cell (x0+i, y0+j)
        return shapely.box(west + i * size + a, north - (j + 1) * size + b,
                           west + i * size + c, north - (j + 1) * size + d)
    # an L standing in cell (0, 0) whose foot reaches into (1, 0): its centroid lies in its
    # notch, in cell (1, 0); its representative point lies on the L, in cell (0, 0)
    ell = shapely.union(box(0, 0, size - 10, 10, size, 120),
                        box(0, 0, size - 10, 10, size + 100, 20))
    geoms = [box(0, 0, 10, 10, 20, 20), box(0, 0, 40, 40, 60, 60), box(1, 0, 5, 5, 15, 15),
             box(0, 1, 5, 5, 15, 15), ell, shapely.Polygon()]
    scores = [0.9, 0.3, 0.6, 0.7, 0.5, 0.99]
    frame = gpd.GeoDataFrame({"score": scores}, geometry=geoms, crs=3857).to_crs(4326)
    cells, sorted_scores = density_cells(frame, zoom)
    assert cells[:, 3].sum() == 5  # the empty geometry has no place on the map
    found = {(int(x), int(y)): sorted_scores[s:s + n].tolist() for x, y, s, n in cells}
    point = shapely.get_coordinates(shapely.point_on_surface(ell))[0]
    ell_cell = (x0 + int((point[0] - west) // size), y0 + int((north - point[1]) // size))
    centroid = shapely.get_coordinates(ell.centroid)[0]
    assert ell_cell == (x0, y0) and not ell.contains(ell.centroid)
    assert int((centroid[0] - west) // size) == 1  # the test's point: another cell
    expected = {(x0, y0): [0.3, 0.5, 0.9], (x0 + 1, y0): [0.6], (x0, y0 + 1): [0.7]}
    assert found.keys() == expected.keys()
    for cell, values in expected.items():
        assert found[cell] == pytest.approx(values), cell
    # row-major, and each start where the previous cell ends
    assert [tuple(c[:2]) for c in cells] == sorted(found, key=lambda c: (c[1], c[0]))
    assert cells[0, 2] == 0 and (cells[1:, 2] == np.cumsum(cells[:-1, 3])).all()
    for nothing in (frame.iloc[:0], frame.iloc[-1:]):  # no building; only an empty one
        empty, none = density_cells(nothing, zoom)
        assert empty.shape == (0, 4) and none.size == 0


def test_a_city_site_of_scenes_far_apart_builds_only_their_tiles(tmp_path):
    """Scenes of distant places in one site (two cities in one run, a country's cities): the
    imagery pyramid holds the tiles the scenes touch, not every tile of their common bounds
    (Las Vegas to Paris at zoom 19: billions, a build that never ended)."""
    import signal

    out = tmp_path / "pred"
    rows = []
    for k, city in enumerate(("vegas", "paris")):
        image, _, _ = render_scene(np.random.default_rng(k), STYLES[city], size=160)
        path = tmp_path / f"{city}.tif"
        transform = tile_transform(STYLES[city], 3, size=160)
        with rasterio.open(path, "w", driver="GTiff", height=160, width=160, count=3,
                           dtype="uint16", crs="EPSG:4326", transform=transform) as dst:
            dst.write(to_dn(image)[[4, 2, 1]])
        polys = [shapely.box(*(transform @ (20, 60)), *(transform @ (45, 30)))]
        write_buildings_parquet(out / "buildings" / f"{city}.parquet", city, polys, [0.9],
                                "EPSG:4326")
        rows.append(SceneRow(city, str(path), "ok", 1))
    append_manifest(out, rows)
    (out / "run.json").write_text(json.dumps({"score_thresh": 0.5}))

    def too_long(*_):
        raise TimeoutError("the site of two distant scenes took over a minute")

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(60)
    try:
        meta = build_site(out, tmp_path / "site", vector_tiles="always")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    deepest = tmp_path / "site" / "data" / "overview" / str(meta["overview"]["max_zoom"])
    tiles = list(deepest.rglob("*.png"))
    # each 48 m scene touches at most four tiles of its deepest zoom
    assert 2 <= len(tiles) <= 8, tiles
    assert meta["density"]["cells"] == 2
