"""vLLM's own load benchmark against a Sparrow server: `sparrow-vllm bench-dataset` writes
4 toy-world video requests and prints the `vllm serve` and `vllm bench serve` commands;
both run as printed (the server with the CPU flags added, the benchmark against its port),
and vLLM's summary reports Sparrow's acceptance from the server's /metrics.

One runner (V1): what this test adds is vLLM's benchmark client and the dataset it reads;
the server's path, /metrics included, runs on both runners in test_serve.py."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from sparrow_vllm.bench.server import CPU_SERVE_ARGS, VllmServer
from tests.toy_models import ENGINE_ENV, runner_env

NUM_REQUESTS = 4
VISUAL_TOKENS = 128


def _printed(out: str, prefix: str) -> list[str]:
    [line] = [line.strip() for line in out.splitlines() if line.strip().startswith(prefix)]
    return shlex.split(line)


def _vllm() -> str:
    vllm = Path(sys.executable).with_name("vllm")
    return str(vllm) if vllm.exists() else "vllm"


def test_vllm_bench_serve_reports_sparrow_acceptance(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sparrow_vllm.cli", "bench-dataset", "--toy-world", "--num", str(NUM_REQUESTS),
         "--visual-tokens", str(VISUAL_TOKENS), "--max-concurrency", "2", "--out", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    serve = _printed(proc.stdout, "vllm serve ")
    bench = _printed(proc.stdout, "vllm bench serve ")

    server = VllmServer(serve[2], [*serve[3:], *CPU_SERVE_ARGS, "--gpu-memory-utilization", "0.3"],
                        tmp_path / "serve.log", env=runner_env("v1"))
    with server:
        server.wait_ready()
        bench[bench.index("--base-url") + 1] = server.url
        result_dir = tmp_path / "result"
        run = subprocess.run(
            [_vllm(), *bench[1:], "--save-result", "--save-detailed", "--result-dir", str(result_dir), "--result-filename", "bench.json"],
            env={**os.environ, **ENGINE_ENV}, capture_output=True, text=True, timeout=600)
    (tmp_path / "bench.out").write_text(run.stdout)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((result_dir / "bench.json").read_text())
    assert (result["completed"], result["failed"]) == (NUM_REQUESTS, 0), result["errors"]
    # every frame of each clip reached the model (prompt lengths are the server's usage counts)
    assert all(n > VISUAL_TOKENS for n in result["input_lens"]), result["input_lens"]
    # the video came before the question (the served chat template), as the target was
    # trained: descriptions ('there are three shapes . first ...'); asked the other way
    # round it answered 'the number is five .' and acceptance length fell from 3.94 to 2.79
    assert all(text.strip().startswith("there ") for text in result["generated_texts"]), result["generated_texts"]
    # vLLM's summary block, from the server's spec-decode counters over the run
    assert "Speculative Decoding" in run.stdout and "Acceptance length:" in run.stdout, run.stdout[-3000:]
    assert result["spec_decode_num_drafts"] > 0
    assert result["spec_decode_acceptance_length"] > 1, result
    assert "Sparrow runner adapter" in server.log.read_text()
