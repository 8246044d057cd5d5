#!/usr/bin/env python
"""Write every rendered section of README.md and BENCHMARKS.md (``<!-- BEGIN name -->`` ...
``<!-- END name -->``) from its source: the MNC fidelity table from the config
(:mod:`mnc_d2.fidelity`), the benchmark tables from the committed reports in bench/results/
(:mod:`bench.tables`). Nothing between the markers is typed by hand.

    python -m bench.render_docs          # rewrite the files (atomically)
    python -m bench.render_docs --check  # exit 1 and name the sections that differ
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mnc_d2.utils.atomic import atomic_write
from mnc_d2.utils.docs import render_sections, section_bodies

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "BENCHMARKS.md")


def renderers() -> dict:
    """Section name -> function returning its Markdown."""
    from mnc_d2.fidelity import fidelity_table

    from . import tables

    return {"fidelity": fidelity_table, **tables.section_renderers()}


def rendered(path: Path, table: dict) -> str:
    return render_sections(path.read_text(encoding="utf-8"), table, source=path.name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    args = parser.parse_args(argv)
    table, stale = renderers(), []
    for name in DOCS:
        path = REPO / name
        text, new = path.read_text(encoding="utf-8"), rendered(path, table)
        if text == new:
            continue
        old_bodies, new_bodies = section_bodies(text), section_bodies(new)
        stale += [f"{name}: {s}" for s in new_bodies if old_bodies.get(s) != new_bodies[s]]
        if not args.check:
            with atomic_write(path, "w", encoding="utf-8") as handle:
                handle.write(new)
    if stale:
        print(("differs from its source: " if args.check else "rewrote: ") + ", ".join(stale))
    return 1 if (stale and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
