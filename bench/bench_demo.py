#!/usr/bin/env python
"""`make demo` as a measurement: wall time, peak RSS and the held-out scores of tools/demo.py.

Runs tools/demo.py in a child process (the data folder is reused when it exists, as ``make demo``
does; training always runs: ``--retrain``) and prints one JSON object with the wall time, the
child's peak RSS, the seconds per training iteration (median of Detectron2's logged ``time``) and
the demo's metrics. ``--isa avx2`` restricts PyTorch's and oneDNN's kernels to AVX2
(``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``) on a machine that has AVX-512, to
approximate the AVX2-only machines of this kind (an approximation: same cores, narrower kernels).

    python -m bench.bench_demo [--isa native|avx2] [--output .cache/bench/demo]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ISA_ENV = {"native": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name with its family/model numbers and widest vector extension, e.g.
    ``AMD EPYC (cpu family 25, model 17, AVX-512)``: virtual machines often report only a vendor
    name, which does not tell an AVX2-only CPU from an AVX-512 one."""
    fields: dict[str, str] = {}
    text = cpuinfo.read_text() if cpuinfo.is_file() else ""
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    name = fields.get("model name") or platform.processor() or "unknown"
    flags = set(fields.get("flags", "").split())
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    numbers = [f"{k} {fields[k]}" for k in ("cpu family", "model") if k in fields]
    return f"{name} ({', '.join([*numbers, isa])})"


def iteration_seconds(log: str) -> float | None:
    """Median of the per-iteration ``time:`` Detectron2 logs during training."""
    times = [float(t) for t in re.findall(r"\btime: ([0-9.]+)", log)]
    return round(statistics.median(times), 3) if times else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isa", choices=sorted(ISA_ENV), default="native")
    parser.add_argument("--output", default=".cache/bench/demo")
    parser.add_argument("--data-root", default="datasets/synthetic")
    args = parser.parse_args()
    env = {**os.environ, **ISA_ENV[args.isa]}
    out = Path(args.output).resolve() / args.isa
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-W", "ignore", str(REPO / "tools" / "demo.py"),
                           "--retrain", "--output", str(out), "--data-root", args.data_root],
                          cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"tools/demo.py failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())["results"]
    sn = metrics.get("spacenet") or next(iter(metrics.values()))["spacenet"]
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, no GPU", "isa": args.isa,
        "torch_threads_env": os.environ.get("OMP_NUM_THREADS", "unset"),
        "wall_min": round(wall / 60, 2), "peak_rss_gb": round(peak_kb / 1024 ** 2, 2),
        "train_s_per_iter_median": iteration_seconds(proc.stdout + proc.stderr),
        "score": round(sn["score"], 4), "tp": int(sn["TP"]), "fp": int(sn["FP"]),
        "fn": int(sn["FN"]), "best_threshold": sn.get("best_threshold"),
        "best_threshold_score": sn.get("best_threshold/score"), "ECE": sn.get("ECE")},
        indent=2))


if __name__ == "__main__":
    main()
