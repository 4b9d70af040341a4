"""benchmarks/ablation.py at its smallest size: the paper's six rows, the IVSB recipes and the
visual-budget drafts, a table with intervals, a plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_ablation_benchmark_smoke(tiny_world, tmp_path):
    features = str(tiny_world["features"])
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "ablation.py"), "--target", str(tiny_world["target"]),
        "--features", features, "--bridge-features", f"1={features}", "--val", f"32={features}", "--val", f"64={features}",
        "--work", str(tmp_path / "drafts"), "--out", str(tmp_path / "ablation.json"),
        "--steps", "2", "--batch-size", "2", "--val-samples", "2", "--k", "3",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads((tmp_path / "ablation.json").read_text())
    assert [r["variant"] for r in result["rows"]] == [
        "VATA+MTP", "none", "VATA", "MTP", "MTP+IVSB", "all three", "all three, drop 0.5",
        "all three, IVSB 1/3", "VATA+MTP, budget 64", "VATA+MTP, all rows", "all three, m*=1",
        "all three, m*=1, drop 0.5"]
    assert len({r["draft"] for r in result["rows"]}) == 11  # MTP+IVSB and all three share a draft
    for row in result["rows"]:
        assert set(row["lengths"]) == {"32", "64"}
        for v in row["lengths"].values():
            # two training steps accept next to nothing; the table's acceptance length is
            # the one its held-out sequences give: 1 + their accepted / their drafts
            drafts, accepted = (sum(column) for column in zip(*v["per_sequence"], strict=True))
            assert v["drafts"] == drafts > 0 and v["acceptance_length"] == pytest.approx(1 + accepted / drafts)
            assert v["ci95"][0] <= v["acceptance_length"] <= v["ci95"][1]
            assert len(v["per_sequence"]) == v["sequences"]
            if row["variant"] != "VATA+MTP":
                assert v["diff_ci95"][0] <= v["diff_vs_reference"] <= v["diff_ci95"][1]
    table = (tmp_path / "ablation.md").read_text()
    assert "| all three, m*=1 |" in table and "held-out sequences per length" in table
    assert (tmp_path / "ablation.png").stat().st_size > 0
