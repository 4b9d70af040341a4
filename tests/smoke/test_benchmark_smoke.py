"""benchmarks/draft_attention.py at its smallest size: runs, writes JSON and a plot."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_draft_attention_benchmark_smoke(tmp_path):
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "draft_attention.py"),
        "--device", "cpu", "--visual-lengths", "64,256", "--text-len", "16", "--batch", "2",
        "--hidden", "64", "--intermediate", "128", "--heads", "4", "--kv-heads", "2",
        "--head-dim", "16", "--vocab", "128", "--reps", "2", "--out", str(tmp_path),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "draft_attention_cpu.json").read_text())
    assert (tmp_path / "draft_attention_cpu.png").stat().st_size > 0
    assert [r["visual_len"] for r in result["rows"]] == [64, 256]
    for row in result["rows"]:
        assert row["sparrow"]["cache_rows"] == 16
        assert row["full"]["cache_rows"] == row["visual_len"] + 16
        assert row["sparrow"]["draft_step_ms"] > 0
    assert result["backend"] == "reference"
