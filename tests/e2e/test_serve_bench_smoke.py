"""benchmarks/serve_bench.py at its smallest size: `vllm serve` and the OpenAI client."""

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


def test_serve_bench_smoke(tmp_path):
    """A 2 x 1 load sweep (1 and 2 requests in flight) without speculation and with adaptive
    Sparrow (fixed-K Sparrow is the same server with adaptive_draft_length false: the engine
    tests run it and count its drafts)."""
    out = tmp_path / "serve"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "serve_bench.py"), "--methods", "none,sparrow",
           "--rounds", "1", "--concurrency", "1,2", "--visual-tokens", "512", "--max-tokens", "8", "--out", str(out)]
    proc = subprocess.run(cmd, env={**os.environ, **ENGINE_ENV}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.with_suffix(".json").read_text())
    rows = {(r["method"], r["concurrency"]): r for r in result["rows"]}
    assert set(rows) == {(m, c) for m in ("none", "sparrow") for c in (1, 2)}
    for (method, concurrency), row in rows.items():
        assert row["requests"] == concurrency and row["output_tokens"] == 8 * concurrency, method
        assert row["prompt_tokens_mean"] > 512, "the server must see all 64 frames, not vLLM's default 32"
        assert row["ttft_mean_s"] > 0 and row["tpot_mean_ms"] > 0 and row["output_tokens_per_s"] > 0
        assert row["text_equal_to_none"] is True
    for concurrency in (1, 2):
        # adaptive Sparrow drafted at both loads (at most K = 4 tokens a draft), and the
        # toy world's trained draft was accepted: share of draft tokens accepted (the
        # adaptive length may draft fewer than K, so not the acceptance length)
        adaptive = rows[("sparrow", concurrency)]
        assert 0 < adaptive["draft_tokens"] <= 4 * adaptive["drafts"], adaptive
        assert adaptive["accepted_tokens"] / adaptive["draft_tokens"] > ACCEPTED_SHARE_FLOOR, adaptive
    goals = result["goals"]
    assert [(g["concurrency"], g["tpot_fixed_ms"]) for g in goals] == [(1, None), (2, None)]
    assert all(isinstance(g["adaptive_at_most_none"], bool) for g in goals)
    assert out.with_suffix(".png").stat().st_size > 0
    assert "| sparrow | 512 | 2 | 2 |" in out.with_suffix(".md").read_text()


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
