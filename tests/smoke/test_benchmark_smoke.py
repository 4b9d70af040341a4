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


def test_plot_sweeps_merges_results_first_file_first(tmp_path):
    rows = [{"method": "eagle", "point": "512", "kind": "video", "visual_tokens": 512, "dsr": 2.0,
             "acceptance_length": 4.0, "draft_ms_per_step_median": 3.0, "draft_ms_per_step_median_ci95": [2.5, 3.5]}]
    other = [{**rows[0], "dsr": 9.0}, {**rows[0], "method": "sparrow-all", "dsr": 1.5}]
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"rows": rows}))
    second.write_text(json.dumps({"rows": other}))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from plot_sweeps import merged_rows
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    merged = merged_rows([first, second])
    assert sorted((r["method"], r["dsr"]) for r in merged) == [("eagle", 2.0), ("sparrow-all", 1.5)]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "plot_sweeps.py"), str(first), str(second),
           "--out", str(tmp_path / "sweep.png")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "sweep.png").stat().st_size > 0
