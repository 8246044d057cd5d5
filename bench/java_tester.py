"""Run the SpaceNet 2 offline tester v2.0 (Java, the leaderboard scorer) and parse its output.

The tester ships as ``visualizer-2.0.zip`` in ``SpaceNetChallenge/BuildingDetectors_Round2``
(``1-XD_XD/code/visualizer-2.0.zip``); download it once and pass its path (or the extracted
``visualizer.jar``). It is run headless: ``java -jar visualizer.jar -no-gui -truth T -solution S
-image-dir EMPTY`` (an image folder without ``PAN/`` adds no images). Needs a Java runtime.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

DEFAULT_ZIP = Path(".cache/bench/tester/visualizer-2.0.zip")


def find_jar(path: str | Path | None = None) -> Path | None:
    """``visualizer.jar`` from a jar or zip path (default ``.cache/bench/tester/``), or None."""
    path = Path(path) if path else DEFAULT_ZIP
    if shutil.which("java") is None or not path.exists():
        return None
    if path.suffix == ".jar":
        return path
    jar = path.parent / "visualizer-2.0" / "visualizer.jar"
    if not jar.exists():
        with zipfile.ZipFile(path) as zf:
            zf.extract("visualizer.jar", jar.parent)
    return jar


def run_tester(jar: Path, truth: Path | list[Path], solution: Path) -> dict:
    """Score with the Java tester: {"per_image": {id: (tp, fp, fn) or None}, "f1": float|None}.

    ``None`` per image = "not scored"; ``f1`` None = "Nothing to score" or no score printed.
    """
    truths = [truth] if isinstance(truth, (str, Path)) else list(truth)
    with tempfile.TemporaryDirectory() as empty:
        out = subprocess.run(["java", "-jar", str(jar), "-no-gui", "-truth",
                              ";".join(map(str, truths)), "-solution", str(solution),
                              "-image-dir", empty], capture_output=True, text=True, check=True)
    return parse_output(out.stdout)


def parse_output(text: str) -> dict:
    per_image: dict[str, tuple[int, int, int] | None] = {}
    lines = text.splitlines()
    i = lines.index("Details:") + 1 if "Details:" in lines else len(lines)
    while i < len(lines):
        name = lines[i].strip()
        if not name or name.startswith("Overall") or name.endswith(":"):
            break
        if i + 1 < len(lines) and lines[i + 1].strip() == "- not scored":
            per_image[name] = None
            i += 2
            continue
        nums = [int(lines[i + k].split(":")[1]) for k in (1, 2, 3)]
        per_image[name] = tuple(nums)
        i += 5
    match = re.search(r"Overall F-score : ([0-9.]+)", text)
    return {"per_image": per_image, "f1": float(match.group(1)) if match else None}
