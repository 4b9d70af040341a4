"""benchmarks/ablation.py at its smallest size: six variants, five drafts, a table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ablation_benchmark_smoke(tiny_world, tmp_path):
    features = str(tiny_world["features"])
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "ablation.py"), "--target", str(tiny_world["target"]),
        "--features", features, "--val", f"32={features}", "--val", f"64={features}",
        "--work", str(tmp_path / "drafts"), "--out", str(tmp_path / "ablation.json"),
        "--steps", "2", "--batch-size", "2", "--val-samples", "2", "--k", "3",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads((tmp_path / "ablation.json").read_text())
    assert [r["variant"] for r in result["rows"]] == ["none", "VATA", "MTP", "MTP+IVSB", "VATA+MTP", "all three"]
    assert len({r["draft"] for r in result["rows"]}) == 5  # MTP+IVSB and all three share a draft
    for row in result["rows"]:
        assert set(row["lengths"]) == {"32", "64"}
        assert all(v["acceptance_length"] >= 1.0 and v["drafts"] > 0 for v in row["lengths"].values())
    table = (tmp_path / "ablation.md").read_text()
    assert "| all three |" in table and "held-out sequences per length" in table
