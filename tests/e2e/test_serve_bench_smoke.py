"""benchmarks/serve_bench.py at its smallest size (two load points, `vllm serve` and the
OpenAI client), and benchmarks/trace_replay.py on the step traces it recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.toy_models import ENGINE_ENV

ROOT = Path(__file__).resolve().parents[2]
# draft tokens accepted: 0.7-1.0 with the toy world's trained draft (K = 4, greedy), ~0 with
# garbage drafts
ACCEPTED_SHARE_FLOOR = 0.4
METHODS = ("none", "sparrow-k4", "sparrow")


def test_serve_bench_smoke(tmp_path):
    """1 and 2 requests in flight with 512-token videos, two interleaved rounds, without
    speculation, with Sparrow at K = 4 and with the adaptive draft length; then the trace
    replay of what the servers recorded."""
    out = tmp_path / "serve"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "serve_bench.py"), "--groups", ",".join(METHODS),
           "--rounds", "2", "--requests", "2", "--concurrency", "1,2", "--visual-tokens", "512",
           "--max-tokens", "8", "--serve-args=--enforce-eager", "--kv-cache-gib", "1", "--out", str(out)]
    proc = subprocess.run(cmd, env={**os.environ, **ENGINE_ENV}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.with_suffix(".json").read_text())
    rows = {(r["method"], r["concurrency"]): r for r in result["rows"]}
    assert set(rows) == {(m, c) for m in METHODS for c in (1, 2)}
    for (method, concurrency), row in rows.items():
        assert row["requests"] == 2 * concurrency, (method, row)  # 2 rounds of one wave
        lo, hi = row["ratio_to_none_ci95"]
        assert 0 < lo <= row["ratio_to_none"] <= hi, row
        assert row["text_equal_to_none"] is True
    for concurrency in (1, 2):
        # adaptive Sparrow drafted at both loads (at most K = 4 tokens a draft), and the
        # toy world's trained draft was accepted: share of draft tokens accepted (the
        # adaptive length may draft fewer than K, so not the acceptance length)
        adaptive = rows[("sparrow", concurrency)]
        assert 0 < adaptive["draft_tokens"] <= 4 * adaptive["drafts"], adaptive
        assert adaptive["accepted_tokens"] / adaptive["draft_tokens"] > ACCEPTED_SHARE_FLOOR, adaptive
    goals = result["goals"]
    assert [(g["concurrency"], g["best_fixed_k"]) for g in goals] == [(1, 4), (2, 4)]
    assert all(isinstance(g["never_slower_than_none"], bool) for g in goals)
    assert out.with_suffix(".png").stat().st_size > 0
    assert "| sparrow | 512 | 2 | 4 |" in out.with_suffix(".md").read_text()

    traces = Path(f"{out}-traces")
    replay_out = tmp_path / "replay"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "trace_replay.py"), str(traces),
                           "--out", str(replay_out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    replay = json.loads(replay_out.with_suffix(".json").read_text())
    [whole] = replay["replay"]
    assert whole["matches"] == whole["steps"] > 0
    assert set(replay["points"]) == {"v512-c1", "v512-c2"}
    # no K = 1..3 traces here: the measured cost is not replayed and says so, the linear
    # fit and the GPU estimate are
    assert replay["goal"]["met"]["measured"] is None
    for point in replay["points"].values():
        assert point["measured_missing_k"] == [1, 2, 3] and point["regret"]["measured"] is None
        assert point["regret"]["gpu"]["best_fixed_k"] in range(5)


def test_demo_runs_through_vllm_serve(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sparrow_vllm.demo", "--results", str(tmp_path)],
                          env={**os.environ, **ENGINE_ENV}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "identical to the target alone: yes" in proc.stderr
    assert "acceptance length (1 + accepted / drafts)" in proc.stderr
    demo = json.loads((tmp_path / "demo.json").read_text())
    assert demo["counters"]["vllm:spec_decode_num_drafts"] > 0
    for question, answer in zip(demo["questions"], demo["sparrow"], strict=True):
        assert answer["prompt_tokens"] > question["frames"] * 8  # every frame reached the model
