// The mnc_d2 web map: footprints over the imagery, offline (MapLibre GL JS, vendored).
// State for scripts and tests: window.viewerState = {ready, threshold, count, total, popup,
// error, truth (with truth: TP, FP, FN at the threshold), density (a city: mode "buildings"
// or "misses", the cells drawn and the total in them at the threshold)}.
// A file the page cannot read stops it with a message in the panel (state.error), not a blank map.
(function () {
"use strict";

(async function () {
  const state = { ready: false, threshold: 0, count: 0, total: 0, popup: "", error: "" };
  window.viewerState = state;
  try {
    await main(state);
  } catch (err) {
    state.error = describeFailure(err);
    document.getElementById("error").textContent = state.error;
  }
})();

// The response of one of the site's own files; a missing one throws naming it.
async function load(path) {
  const response = await fetch(path);
  if (!response.ok) {
    throw new Error("cannot read " + path + " (HTTP " + response.status + "): the site is " +
                    "incomplete; build it again with tools/view.py");
  }
  return response;
}

function describeFailure(err) {
  if (location.protocol === "file:") {
    // browsers refuse a page opened from disk its own data files (fetch of file:// URLs)
    // (on Windows the path is /C:/...: the drive letter without the leading slash)
    const folder = decodeURIComponent(location.pathname.replace(/[^/]*$/, ""))
      .replace(/^\/([A-Za-z]:)/, "$1");
    return "This page was opened from disk, where browsers do not let it read its data files. " +
      "Serve its folder, then open http://127.0.0.1:8000/: python3 -m http.server 8000 " +
      "--directory " + (/\s/.test(folder) ? '"' + folder + '"' : folder) +
      " (or tools/view.py PREDICTIONS --serve).";
  }
  return "The map could not be drawn: " + (err && err.message ? err.message : String(err));
}

async function main(state) {
  const meta = await (await load("data/meta.json")).json();
  const footprints = meta.footprints || { kind: "geojson", url: "data/buildings.geojson" };
  const vector = footprints.kind === "tiles";
  // every file is read before the map exists: its "load" event must not pass unseen
  const buildings = vector ? null : await (await load(footprints.url)).json();
  // the truth: one GeoJSON, or for a city vector tiles as its buildings
  const hasTruth = Boolean(meta.truth_counts);
  const truthFootprints = meta.truth_footprints || { kind: "geojson", url: "data/truth.geojson" };
  const truth = hasTruth && truthFootprints.kind === "geojson"
    ? await (await load(truthFootprints.url)).json() : null;
  // with truth: the TP and FP buildings' scores, sorted (the counts at any threshold)
  const matches = hasTruth ? {
    TP: new Float64Array(await (await load("data/tp_scores.f64")).arrayBuffer()),
    FP: new Float64Array(await (await load("data/fp_scores.f64")).arrayBuffer()),
  } : null;
  // scores ascending: a city's vector tiles come with every score sorted in data/scores.f64
  const scores = vector
    ? new Float64Array(await (await load("data/scores.f64")).arrayBuffer())
    : Float64Array.from(buildings.features.map((f) => f.properties.score)).sort();
  // a city zoomed out: buildings (and with truth, misses) per grid cell, each cell's scores
  // sorted, so the cells are counted exactly at any threshold
  const densities = {};
  for (const [mode, spec] of [["buildings", meta.density], ["misses", meta.misses]]) {
    if (spec) {
      densities[mode] = { grid: await (await load(spec.url)).json(),
        scores: new Float64Array(await (await load(spec.scores)).arrayBuffer()) };
    }
  }
  const density = densities.buildings ? densities : null;
  state.footprints = footprints.kind;
  // Served by tools/view.py --serve: full-resolution tiles from the scenes themselves (a static
  // host answers 404 here and the page keeps to the overviews).
  const first = meta.scenes.find((s) => s.corners);
  const tiled = first ? [200, 204].includes(
    (await fetch("tiles/" + encodeURIComponent(first.scene) + "/0/0/0.png")).status) : false;
  state.tiled = tiled;
  state.total = scores.length;

  const layers = [{ id: "background", type: "background", paint: { "background-color": "#1d1f21" } }];
  const sources = {};
  if (meta.basemap) {
    sources.basemap = { type: "raster", tiles: [meta.basemap], tileSize: 256 };
    layers.push({ id: "basemap", type: "raster", source: "basemap" });
  }
  const map = new maplibregl.Map({
    container: "map",
    style: { version: 8, sources: sources, layers: layers },
    bounds: meta.bounds || [-180, -85, 180, 85],
    fitBoundsOptions: { padding: 20 },
    attributionControl: false,
  });
  window.viewerMap = map;

  const panel = document.getElementById("scenes");
  for (const s of meta.scenes) {
    const div = document.createElement("div");
    div.className = "scene " + s.status;
    div.textContent = s.scene + ": " + s.status + (s.status === "failed" ? " (" + s.error + ")" : "");
    panel.appendChild(div);
  }
  if (meta.empty_reason) {
    document.getElementById("empty").textContent = "No buildings to show: " + meta.empty_reason;
  }

  // the shape of the matches at the run's threshold (tools/score.py --polygon-metrics)
  let shapeText = "";
  const s = meta.truth_shape;
  if (s && s.pairs) {
    shapeText = "; shape of the " + s.pairs + " matches at the run's threshold " +
      meta.threshold.toFixed(2) + ": mean IoU " + s.iou.toFixed(3) +
      ", C-IoU " + s.ciou.toFixed(3) + ", PoLiS " + s.polis.toFixed(2) +
      " m, max tangent angle error " + s.mta.toFixed(1) + "\u00b0, vertices " +
      s.n_ratio.toFixed(2) + "x the truth's";
  }
  if (hasTruth) {
    document.getElementById("truth-legend").hidden = false;
  }
  // how many of the sorted ``values`` are at or above ``threshold`` (a binary search)
  function atOrAbove(values, threshold) {
    let lo = 0, hi = values.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (values[mid] < threshold) lo = mid + 1; else hi = mid; }
    return values.length - lo;
  }
  // truth matched by a building at or above the threshold: TP, else FN (the site matched
  // every building once: a building's match is the same at any threshold up to its score)
  function truthColour(threshold) {
    return ["match", ["get", "match"], "ignored", "#9e9e9e",
      ["case", [">=", ["get", "matched_score"], threshold], "#00c853", "#ff1744"]];
  }
  // the density cells as GeoJSON: each cell's outline, area on the ground and its count at
  // the threshold (a binary search in its slice of the sorted scores): the buildings at or
  // above it, or the truth polygons no building at or above it matched (misses, FN)
  // fixed classes, so cities compare: a few hundred buildings per km2 in suburbs, thousands in
  // dense informal settlements; misses a tenth of that
  const DENSITY = {
    buildings: { label: "buildings", stops: [100, 500, 1000, 2500, 5000],
                 count: (values, t) => atOrAbove(values, t) },
    misses: { label: "misses (FN)", stops: [10, 50, 100, 250, 500],
              count: (values, t) => values.length - atOrAbove(values, t) },
  };
  const RAMP = ["#fcfdbf", "#fdc78d", "#fc8961", "#e3506a", "#b5367a", "#6a1c81"];
  for (const d of Object.values(densities)) {
    const n = 2 ** d.grid.zoom;
    const lon = (x) => x / n * 360 - 180;
    const lat = (y) => Math.atan(Math.sinh(Math.PI * (1 - 2 * y / n))) * 180 / Math.PI;
    d.cells = d.grid.cells.map(([x, y, start, count]) => {
      const side = 40075016.68557849 / n * Math.cos(lat(y + 0.5) * Math.PI / 180);  // metres
      return { values: d.scores.subarray(start, start + count), km2: side * side / 1e6, ring: [
        [lon(x), lat(y)], [lon(x + 1), lat(y)], [lon(x + 1), lat(y + 1)], [lon(x), lat(y + 1)],
        [lon(x), lat(y)]] };
    });
  }
  let densityMode = "buildings";
  function densityAt(threshold) {
    const features = [];
    let total = 0;
    for (const c of densities[densityMode].cells) {
      const n = DENSITY[densityMode].count(c.values, threshold);
      if (!n) continue;
      total += n;
      features.push({ type: "Feature", properties: { n: n, per_km2: n / c.km2 },
                      geometry: { type: "Polygon", coordinates: [c.ring] } });
    }
    state.density = { mode: densityMode, cells: features.length, total: total };
    return { type: "FeatureCollection", features: features };
  }
  function densityColour() {
    const stops = DENSITY[densityMode].stops;
    return ["step", ["get", "per_km2"], RAMP[0],
            ...stops.flatMap((v, i) => [v, RAMP[i + 1]])];
  }
  function densityLegend() {
    const stops = DENSITY[densityMode].stops;
    const legend = document.getElementById("density-stops");
    legend.textContent = "";
    ["<" + stops[0], ...stops.map((v, i) => v.toLocaleString("en") +
                                  (i === stops.length - 1 ? "+" : ""))].forEach((text, i) => {
      const swatch = document.createElement("span");
      swatch.className = "sw";
      swatch.style.background = RAMP[i];
      legend.append(swatch, text + " ");
    });
  }
  const slider = document.getElementById("threshold");
  function apply(threshold) {
    state.threshold = threshold;
    state.count = atOrAbove(scores, threshold);
    document.getElementById("threshold-value").textContent = threshold.toFixed(2);
    document.getElementById("count").textContent = state.count + " buildings shown";
    if (matches) {
      const tp = atOrAbove(matches.TP, threshold);
      const c = { TP: tp, FP: atOrAbove(matches.FP, threshold), FN: meta.truth_kept - tp };
      state.truth = c;
      document.getElementById("truth").textContent = "TP " + c.TP + ", FP " + c.FP + ", FN " +
        c.FN + " (SpaceNet rules, at the threshold " + threshold.toFixed(2) + ")" + shapeText;
    }
    if (map.getLayer("buildings-fill")) {
      const filter = [">=", ["get", "score"], threshold];
      map.setFilter("buildings-fill", filter);
      map.setFilter("buildings-line", filter);
    }
    if (map.getLayer("truth")) {
      map.setPaintProperty("truth", "line-color", truthColour(threshold));
    }
    if (density) {
      const data = densityAt(threshold);
      if (map.getSource("density")) map.getSource("density").setData(data);
    }
  }
  // zoomed out: buildings or misses per km2 (with truth, a choice in the panel)
  function setDensityMode(mode) {
    densityMode = mode;
    document.getElementById("density-mode").value = mode;
    densityLegend();
    if (map.getLayer("density")) map.setPaintProperty("density", "fill-color", densityColour());
    apply(state.threshold);
  }
  if (densities.misses) {
    document.getElementById("density-misses").hidden = false;
  }
  document.getElementById("density-mode").addEventListener(
    "change", (e) => setDensityMode(e.target.value));
  window.viewerSetDensityMode = setDensityMode;
  slider.value = meta.threshold;
  slider.addEventListener("input", () => apply(parseFloat(slider.value)));
  window.viewerSetThreshold = (t) => { slider.value = t; apply(t); };
  apply(meta.threshold);  // the counts before the map has loaded (again once its layers exist)

  map.on("load", () => {
    const base = location.origin + location.pathname.replace(/[^/]*$/, "");
    const mosaic = meta.overview;
    if (mosaic && mosaic.tiles) {  // a city: one imagery pyramid, not an image per scene
      map.addSource("overview", { type: "raster", tileSize: 256, tiles: [base + mosaic.url],
                                  minzoom: mosaic.min_zoom, maxzoom: mosaic.max_zoom,
                                  bounds: mosaic.bounds });
      map.addLayer({ id: "overview", type: "raster", source: "overview" });
      if (tiled) {  // past the pyramid: every scene under the tile, cut by the server
        map.addSource("mosaic", { type: "raster", tileSize: 256, minzoom: mosaic.max_zoom + 1,
                                  maxzoom: 22, bounds: mosaic.bounds,
                                  tiles: [base + "tiles/_mosaic/{z}/{x}/{y}.png"] });
        map.addLayer({ id: "mosaic", type: "raster", source: "mosaic",
                       minzoom: mosaic.max_zoom + 1 });
      }
    }
    meta.scenes.forEach((s, i) => {
      if (!s.corners || !s.image) return;
      map.addSource("image-" + i, { type: "image", url: s.image, coordinates: s.corners });
      map.addLayer({ id: "image-" + i, type: "raster", source: "image-" + i });
      if (tiled) {  // zoomed in: the scene's own pixels, cut by the server
        const lons = s.corners.map((c) => c[0]), lats = s.corners.map((c) => c[1]);
        map.addSource("tiles-" + i, {
          type: "raster", tileSize: 256, minzoom: 14, maxzoom: 22,
          tiles: [base + "tiles/" + encodeURIComponent(s.scene) + "/{z}/{x}/{y}.png"],
          bounds: [Math.min(...lons), Math.min(...lats), Math.max(...lons), Math.max(...lats)],
        });
        map.addLayer({ id: "tiles-" + i, type: "raster", source: "tiles-" + i, minzoom: 14 });
      }
    });
    const outlines = {
      type: "FeatureCollection",
      features: meta.scenes.filter((s) => s.corners).map((s) => ({
        type: "Feature",
        properties: { scene: s.scene, status: s.status },
        geometry: { type: "Polygon", coordinates: [s.corners.concat([s.corners[0]])] },
      })),
    };
    if (density) {  // below the zoom where buildings appear: buildings per km2, by cell
      document.getElementById("density-legend").hidden = false;
      densityLegend();
      map.addSource("density", { type: "geojson", data: densityAt(state.threshold) });
      map.addLayer({ id: "density", type: "fill", source: "density",
                     maxzoom: densities.buildings.grid.layer_max_zoom, paint: {
        "fill-opacity": 0.6, "fill-outline-color": "rgba(0, 0, 0, 0)",
        "fill-color": densityColour(),
      } });
      map.on("click", "density", (e) => {
        const p = e.features[0].properties;
        state.popup = p.n + " " + DENSITY[densityMode].label + " at score \u2265 " +
          state.threshold.toFixed(2) + " in this cell (" + Math.round(p.per_km2) +
          " per km\u00b2)";
        new maplibregl.Popup().setLngLat(e.lngLat).setText(state.popup).addTo(map);
      });
    }
    map.addSource("scenes", { type: "geojson", data: outlines });
    map.addLayer({ id: "scenes", type: "line", source: "scenes", paint: {
      "line-width": 2,
      "line-color": ["match", ["get", "status"], "failed", "#ff1744", "skipped", "#9e9e9e", "#00e5ff"],
    } });
    if (vector) {  // a city: the buildings in view only, cut into tiles at site build
      map.addSource("buildings", { type: "vector", tiles: [base + footprints.url],
                                   minzoom: footprints.min_zoom, maxzoom: footprints.max_zoom });
    } else {
      map.addSource("buildings", { type: "geojson", data: buildings });
    }
    const layer = vector ? { "source-layer": footprints.layer } : {};
    const byScore = ["interpolate", ["linear"], ["get", "score"], 0, "#fde725", 0.5, "#21918c", 1, "#440154"];
    // with truth: TP green, FP orange, at any threshold (ignored: under the rules' minimum
    // area, neither TP nor FP, grey as ignored truth)
    const colour = hasTruth ? ["match", ["get", "match"], "TP", "#00c853", "FP", "#ff9100",
      "ignored", "#9e9e9e", byScore] : byScore;
    if (hasTruth) {
      if (truth) {
        map.addSource("truth", { type: "geojson", data: truth });
      } else {  // a city: from the zoom where its buildings appear, the truth in view only
        map.addSource("truth", { type: "vector", tiles: [base + truthFootprints.url],
                                 minzoom: truthFootprints.min_zoom,
                                 maxzoom: truthFootprints.max_zoom });
      }
      map.addLayer({ id: "truth", type: "line", source: "truth",
                     ...(truth ? {} : { "source-layer": truthFootprints.layer }), paint: {
        "line-width": 2, "line-dasharray": [2, 1], "line-color": truthColour(meta.threshold),
      } });
    }
    map.addLayer({ id: "buildings-fill", type: "fill", source: "buildings", ...layer,
                   paint: { "fill-color": colour, "fill-opacity": 0.45 } });
    map.addLayer({ id: "buildings-line", type: "line", source: "buildings", ...layer,
                   paint: { "line-color": colour, "line-width": 1.5 } });
    map.on("click", "buildings-fill", (e) => {
      const p = e.features[0].properties;
      state.popup = "scene " + p.scene + ", building " + p.building_id + ", score " +
        Number(p.score).toFixed(4) + ", " + Number(p.area_m2).toFixed(1) + " m\u00b2";
      const known = (v) => v !== undefined && v !== null && v !== "null";
      if (p.match === "TP" && known(p.ciou)) {  // its shape against the truth it matched
        state.popup += "; TP: IoU " + Number(p.iou).toFixed(3) + ", C-IoU " +
          Number(p.ciou).toFixed(3) + ", PoLiS " + Number(p.polis_m).toFixed(2) +
          " m, max tangent angle error " + Number(p.mta_deg).toFixed(1) + "\u00b0, " +
          p.vertices + " vertices (truth " + p.truth_vertices + ")";
      } else if (p.match === "FP" && known(p.iou)) {
        state.popup += "; FP: best IoU with the truth " + Number(p.iou).toFixed(3);
      }
      new maplibregl.Popup().setLngLat(e.lngLat).setText(state.popup).addTo(map);
    });
    apply(state.threshold);  // the slider may have moved while the map loaded
    map.once("idle", () => { state.ready = true; });
  });
}
})();
