"""One figure from several visual-length sweep results: the rows of every JSON, the first
file's row kept where two hold the same method and point (e.g. a main sweep plus a method
that ran separately on fewer lengths).

    python benchmarks/plot_sweeps.py benchmarks/results/visual_budget_sweep_toy_world.json \\
        benchmarks/results/visual_budget_sweep_toy_world_all_rows.json \\
        --out benchmarks/results/visual_budget_sweep_toy_world_with_all_rows.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sparrow_vllm.bench.sweep_report import plot


def merged_rows(paths: list[Path]) -> list[dict]:
    rows: dict[tuple[str, str], dict] = {}
    for path in paths:
        for row in json.loads(path.read_text())["rows"]:
            # results written before the image point was added have no "point": all video
            rows.setdefault((row["method"], row.get("point", str(row["visual_tokens"]))), row)
    return list(rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="visual_length_sweep.py JSON results")
    parser.add_argument("--out", type=Path, required=True, help="the figure (png)")
    args = parser.parse_args()
    plot(merged_rows(args.results), args.out)


if __name__ == "__main__":
    main()
