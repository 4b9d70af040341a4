"""benchmarks/real_geometry.py at its smoke geometry and smallest settings: a weightless
Qwen2.5-VL target (load_format="dummy") with random Sparrow and eagle drafts of its shape,
on both model runners."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sparrow_vllm.bench.geometry import QWEN25_VL_7B, SMOKE, TOY_TARGET, build_target, target_config
from sparrow_vllm.serving.vllm.runners import RUNNERS
from tests.toy_models import ENGINE_ENV

ROOT = Path(__file__).resolve().parents[2]
K = 2


def test_7b_config_keeps_the_toy_targets_keys(tmp_path):
    toy = json.loads((TOY_TARGET / "config.json").read_text())
    config = target_config(toy, QWEN25_VL_7B)
    text, vision = config["text_config"], config["vision_config"]
    assert (text["hidden_size"], text["num_hidden_layers"], text["num_key_value_heads"]) == (3584, 28, 4)
    assert text["rope_parameters"]["mrope_section"] == [16, 24, 24] and len(text["layer_types"]) == 28
    assert (vision["depth"], vision["out_hidden_size"], vision["fullatt_block_indexes"]) == (32, 3584, [7, 15, 23, 31])
    assert config["video_token_id"] == toy["video_token_id"] and set(toy) <= set(config)
    target = build_target(tmp_path / "target", SMOKE)
    assert (target / "tokenizer.json").is_file() and not list(target.glob("*.safetensors"))


def test_real_geometry_smoke(tmp_path):
    out = tmp_path / "geometry"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "real_geometry.py"), "--scale", "smoke", "--lengths", "512",
           "--batches", "1,2", "--k", str(K), "--decode-steps", "3", "--skip-steps", "1", "--models-dir", str(tmp_path / "models"),
           "--out", str(out)]
    proc = subprocess.run(cmd, env={**os.environ, **ENGINE_ENV}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.with_suffix(".json").read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    assert "| sparrow | v2 | 2 | 512 |" in out.with_suffix(".md").read_text()
    rows = {(r["method"], r["runner"], r["batch"]): r for r in result["rows"]}
    assert set(rows) == {(m, r, b) for m in ("sparrow", "eagle") for r in ("v1", "v2") for b in (1, 2)}
    for (method, runner, batch), row in rows.items():
        where = (method, runner, batch)
        # every measured step was a full decode step: each request verified K+1 tokens, and
        # the drafter ran once in it
        assert row["decode_steps"] == 3, where
        assert row["verified_tokens_per_step"] == batch * (K + 1), where
        assert row["drafter_calls_per_step"] == 1, where
        assert row["target_verify_ms"] > 0 and row["drafter_ms"] > 0, where
        assert 0 < row["drafter_share"] < 1, where
        # the engine verified the drafts (vLLM's counters): K drafts per request and step
        assert row["drafts_verified"] >= batch * row["decode_steps"], where
        info = result["runner_info"][f"{method}-{runner}"]
        assert RUNNERS[runner].runner_class in info["runner_bases"], info
        assert info["adapter"] == RUNNERS[runner].drafter_class(method), info
    for name, runs in result["runs"].items():
        for run in runs:
            where = (name, run["batch"])
            # every verified draft was K tokens long (fixed K: no step drafted fewer)
            assert run["draft_tokens"] == K * run["drafts"] > 0, where
            # a random draft of a random target is next to never right: acceptance length
            # ~1.0 (a verification that took drafts unchecked would give K + 1)
            assert run["acceptance_length"] < 1.5, (where, run["counters"])
    assert result["geometry"]["name"] == "smoke" and result["machine"] and result["provenance"]["command"]
