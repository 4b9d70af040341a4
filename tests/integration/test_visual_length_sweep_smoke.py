"""benchmarks/visual_length_sweep.py at its smallest size, on the committed toy world."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.toy_models import ENGINE_ENV

ROOT = Path(__file__).resolve().parents[2]
ACCEPTANCE_FLOOR = 2.0


def test_visual_length_sweep_smoke(tmp_path):
    out = tmp_path / "sweep"
    methods = ("none", "eagle", "sparrow", "sparrow-budget")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "visual_length_sweep.py"), "--lengths", "64,128",
           "--scenes", "1", "--max-tokens", "8", "--image", "--methods", ",".join(methods), "--out", str(out)]
    proc = subprocess.run(cmd, env={**os.environ, **ENGINE_ENV}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.with_suffix(".json").read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    text = out.with_suffix(".md").read_text()
    assert "| sparrow | video | 128 |" in text and "| sparrow-budget | image | 16 |" in text
    assert "DSR >= eagle's on one image" in text
    rows = {(r["method"], r["point"]): r for r in result["rows"]}
    assert set(rows) == {(m, p) for m in methods for p in ("64", "128", "image")}
    for (method, n), row in rows.items():
        assert row["text_equal_to_none"], (method, n)
        assert row["prefill_s"] > 0 and row["decode_s"] > 0
        if method != "none":
            # the toy world's trained drafts (K = 4) reach ~4 greedy; a draft that drafts
            # garbage stays at ~1.0
            assert row["acceptance_length"] > ACCEPTANCE_FLOOR, (method, n, row["acceptance_length"])
            assert len(row["per_position_rate"]) == 4 and row["draft_ms_per_step"] > 0
    assert rows[("none", "64")]["dsr"] == 1.0
    assert set(result["targets"]) == {"sparrow", "sparrow-budget", "visual_budget"}
    goals = result["targets"]["visual_budget"]
    assert set(goals["dsr_vs_eagle"]) == {"64", "128", "image"}
    assert goals["acceptance_short_vs_eagle"]["point"] == "64"
    # every request ran with the same prompt in each method, with the requested visual length
    prompts = {m: [r["prompt_tokens"] for r in reqs] for m, reqs in result["requests"].items()}
    assert all(p == prompts["none"] for p in prompts.values())
    # the image request's prompt holds its 16 image tokens, not a video's
    # ...and is asked first (points in increasing visual length: long prefills slow later steps)
    assert [r["kind"] for r in result["requests"]["none"]] == ["image", "video", "video"]
    image = next(r for r in result["requests"]["none"] if r["kind"] == "image")
    assert image["frames"] == 1 and image["prompt_tokens"] < rows[("none", "64")]["prompt_tokens"]
