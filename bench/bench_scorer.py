#!/usr/bin/env python
"""Scorer speed and agreement: mnc_d2 vs the Java tester v2.0 and solaris 0.4.0, side by side.

Builds synthetic SpaceNet truth/proposal CSV pairs (``--tiles`` list, ~60 buildings per tile,
SpaceNet's text format: ``x y 0`` points, ``),(`` between rings, a geo polygon in the truth's
PolygonWKT_Geo column). With ``--hostile`` (default on) about 4 % of the proposals and 1 % of the
truths are made awkward: bow-ties, rings traced with a loop, holes (some written ``), (``),
MULTIPOLYGONs, unclosed rings, exactly-20 px rectangles, repeated points.

Every time is a whole process, start to exit, measured from outside (median of ``--repeats``):
``tools/score.py --json`` (spacenet rules) against ``java -jar visualizer.jar -no-gui`` on the same
files, and ``tools/score.py --rules solaris`` against a process running solaris 0.4.0's scorer.
mnc_d2's modules are byte-compiled first (``compileall``, as ``pip install`` does), so a process
started with PYTHONDONTWRITEBYTECODE set does not pay for compiling them on every run.
Per-image TP/FP/FN are compared (spacenet rules vs the tester, solaris rules vs solaris). Prints
one JSON object. The tester needs java and its zip (bench/java_tester.py); without them the
report says so.

    python -m bench.bench_scorer [--tiles 200 2000] [--solaris-tiles 2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from shapely import affinity
from shapely.geometry import box

from .java_tester import find_jar, parse_output

ROOT = Path(__file__).resolve().parents[1]

CITIES = ("AOI_2_Vegas", "AOI_3_Paris", "AOI_4_Shanghai", "AOI_5_Khartoum")
PY = [sys.executable, "-W", "ignore"]


def _ring_text(coords) -> str:
    return ",".join(f"{x:.2f} {y:.2f} 0" for x, y in coords)


def spacenet_text(rings, sep="),(") -> str:
    """Rings (lists of (x, y)) -> SpaceNet's polygon text."""
    return "POLYGON ((" + sep.join(_ring_text(r) for r in rings) + "))"


def _geo(rings) -> str:
    return "POLYGON ((" + "),(".join(",".join(f"{-115.3 + x * 3e-6:.9f} {36.2 - y * 3e-6:.9f} 0"
                                            for x, y in r) for r in rings) + "))"


def _hostile(poly, rng, truth: bool) -> tuple[str, str]:
    """An awkward text for a polygon near ``poly``; returns (kind, text). MULTIPOLYGON only on
    the truth side: in a proposal row it stops the tester (it reads the confidence right after
    the first polygon)."""
    c = list(poly.exterior.coords)[:-1]
    kinds = ["bowtie", "loop", "hole", "spaced_hole", "unclosed", "area20", "repeat"]
    kind = rng.choice(kinds + ["multi"] if truth else kinds)
    if kind == "bowtie":
        c[1], c[2] = c[2], c[1]
        return kind, spacenet_text([c + [c[0]]])
    if kind == "loop":
        inner = list(affinity.scale(poly, 0.5, 0.5).exterior.coords)
        return kind, spacenet_text([c + [c[0]] + inner + [c[0]]])
    if kind in ("hole", "spaced_hole"):
        hole = list(affinity.scale(poly, 0.4, 0.4).exterior.coords)[::-1]
        return kind, spacenet_text([c + [c[0]], hole], "),(" if kind == "hole" else "), (")
    if kind == "multi":
        other = affinity.translate(poly, 25, 0)
        return kind, ("MULTIPOLYGON (((" + _ring_text(c + [c[0]]) + ")),(("
                      + _ring_text(list(other.exterior.coords)) + ")))")
    if kind == "unclosed":
        return kind, spacenet_text([c])
    if kind == "area20":
        x, y = c[0]
        return kind, spacenet_text([[(x, y), (x + 4, y), (x + 4, y + 5), (x, y + 5), (x, y)]])
    return kind, spacenet_text([[c[0], c[0], *c[1:], c[0]]])


def make_pair(tiles: int, per_tile: int, seed: int, out: Path, hostile: bool = True,
              kinds: dict | None = None) -> tuple[Path, Path, int]:
    """Write truth.csv and proposals.csv; returns their paths and the proposal count.
    ``kinds`` (optional dict) receives how many awkward polygons of each kind were written."""
    kinds = {} if kinds is None else kinds
    rng = np.random.default_rng(seed)
    truth_lines = ["ImageId,BuildingId,PolygonWKT_Pix,PolygonWKT_Geo"]
    prop_lines = ["ImageId,BuildingId,PolygonWKT_Pix,Confidence"]
    for t in range(tiles):
        image_id = f"{CITIES[t % 4]}_img{t}"
        n = int(rng.integers(per_tile // 2, per_tile * 3 // 2 + 1))
        if n == 0 or t % 97 == 0:
            truth_lines.append(f"{image_id},-1,POLYGON EMPTY,POLYGON EMPTY")
            n = 0
        cols = int(np.ceil(np.sqrt(max(n, 1))))
        cell = 650 / cols
        for b in range(n):
            cx, cy = (b % cols + 0.5) * cell, (b // cols + 0.5) * cell
            w, h = rng.uniform(4, cell * 0.8, size=2)
            poly = affinity.rotate(box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2),
                                   rng.uniform(0, 90), origin="centroid")
            rings = [list(poly.exterior.coords)]
            text = spacenet_text(rings)
            if hostile and rng.random() < 0.01:
                kind, text = _hostile(poly, rng, True)
                kinds[f"truth_{kind}"] = kinds.get(f"truth_{kind}", 0) + 1
            truth_lines.append(f'{image_id},{b},"{text}","{_geo(rings)}"')
            if rng.random() < 0.85:  # detected, with localisation error
                jitter = affinity.translate(affinity.scale(poly, *rng.uniform(0.8, 1.2, 2)),
                                            *rng.normal(0, w * 0.08, 2))
                text = spacenet_text([list(jitter.exterior.coords)])
                if hostile and rng.random() < 0.04:
                    kind, text = _hostile(jitter, rng, False)
                    kinds[f"proposal_{kind}"] = kinds.get(f"proposal_{kind}", 0) + 1
                prop_lines.append(f'{image_id},{b},"{text}",{rng.random():.6f}')
        for f in range(int(rng.poisson(per_tile * 0.12))):  # false positives
            x, y = rng.uniform(0, 640, 2)
            fp_text = spacenet_text([list(box(x, y, x + 9, y + 7).exterior.coords)])
            prop_lines.append(f'{image_id},{1000 + f},"{fp_text}",{rng.random():.6f}')
    truth, props = out / "truth.csv", out / "proposals.csv"
    truth.write_text("\n".join(truth_lines) + "\n")
    props.write_text("\n".join(prop_lines) + "\n")
    return truth, props, len(prop_lines) - 1


def timed(cmd: list[str], repeats: int) -> tuple[float, list[float], str]:
    """Median wall time of a whole process (start to exit) and the last stdout."""
    times, out = [], ""
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[:3]} failed: {proc.stderr[-2000:]}")
        out = proc.stdout
    return statistics.median(times), times, out


def ours(truth: Path, props: Path, rules: str, per_image: Path, repeats: int):
    cmd = [*PY, str(ROOT / "tools" / "score.py"), "--truth", str(truth), "--proposals",
           str(props), "--rules", rules, "--json", "--per-image", str(per_image)]
    median, times, out = timed(cmd, repeats)
    rows = {}
    for line in per_image.read_text().splitlines()[1:]:
        f = line.split(",")
        if f[2] == "True":
            rows[f[0]] = (int(f[3]), int(f[4]), int(f[5]))
    return median, times, json.loads(out), rows


def diff(a: dict, b: dict) -> dict:
    """Per-image disagreement of two {image: (tp, fp, fn)} (images with nothing are dropped)."""
    a = {k: tuple(v) for k, v in a.items() if any(v)}
    b = {k: tuple(v) for k, v in b.items() if any(v)}
    keys = set(a) | set(b)
    differing = [k for k in keys if a.get(k) != b.get(k)]
    tp = sum(v[0] for v in a.values())
    return {"images": len(keys), "images_differing": len(differing),
            "tp_reference": tp, "tp_differing": sum(abs(a.get(k, (0,))[0] - b.get(k, (0,))[0])
                                                    for k in differing),
            "identical": not differing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--per-tile", type=int, default=60)
    parser.add_argument("--solaris-tiles", type=int, default=2000,
                        help="tiles of the solaris comparison (0 skips solaris)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-hostile", dest="hostile", action="store_false")
    parser.add_argument("--tester", help="visualizer-2.0.zip or visualizer.jar")
    args = parser.parse_args()
    jar = find_jar(args.tester)
    import compileall

    from bench.bench_demo import cpu_model

    compileall.compile_dir(str(ROOT / "mnc_d2"), quiet=1)  # tools/score.py runs as a script

    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "cpu": cpu_model(),
              "hostile": args.hostile,
              "java_tester": str(jar) if jar else "not found: tester comparison not run",
              "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for tiles in args.tiles:
            work = Path(tmp) / f"t{tiles}"
            work.mkdir()
            kinds: dict = {}
            truth, props, n_props = make_pair(tiles, args.per_tile, args.seed, work, args.hostile,
                                              kinds)
            run = {"tiles": tiles, "proposals": n_props, "hostile": dict(sorted(kinds.items()))}
            t_ours, times, js, rows = ours(truth, props, "spacenet", work / "pi.csv",
                                           args.repeats)
            run.update(mnc_d2_spacenet_s=round(t_ours, 3),
                       mnc_d2_spacenet_runs_s=[round(t, 3) for t in times],
                       mean_city_f1=round(js["mean_city_f1"], 6))
            if jar:
                t_java, jtimes, jout = timed(["java", "-jar", str(jar), "-no-gui", "-truth",
                                              str(truth), "-solution", str(props),
                                              "-image-dir", str(work / "none")], args.repeats)
                java = parse_output(jout)
                jrows = {k: v for k, v in java["per_image"].items() if v is not None}
                run.update(java_tester_s=round(t_java, 3),
                           java_tester_runs_s=[round(t, 3) for t in jtimes],
                           java_mean_city_f1=java["f1"],
                           speedup_vs_java=round(t_java / t_ours, 2),
                           vs_java=diff(jrows, rows))
            report["runs"].append(run)
            print(json.dumps(run), file=sys.stderr)
        if args.solaris_tiles:
            # solaris (shapely 1/2 WKT reading) rejects unclosed rings: a clean pair for it.
            work = Path(tmp) / f"solaris{args.solaris_tiles}"
            work.mkdir()
            truth, props, n_props = make_pair(args.solaris_tiles, args.per_tile, args.seed, work,
                                              hostile=False)
            t_sr, sr_times, _, srows = ours(truth, props, "solaris", work / "ps.csv",
                                            args.repeats)
            t_sol, _, sout = timed([*PY, "-m", "bench.solaris_ref", str(truth), str(props)], 1)
            run = {"tiles": args.solaris_tiles, "proposals": n_props, "hostile": False,
                   "mnc_d2_solaris_rules_s": round(t_sr, 3),
                   "mnc_d2_solaris_rules_runs_s": [round(t, 3) for t in sr_times],
                   "solaris_0_4_0_s": round(t_sol, 3),
                   "speedup_vs_solaris": round(t_sol / t_sr, 1),
                   "vs_solaris": diff(json.loads(sout), srows)}
            report["solaris"] = run
            print(json.dumps(run), file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
