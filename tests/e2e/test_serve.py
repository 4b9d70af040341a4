"""`vllm serve --speculative-config '{"method":"sparrow",...}'` with the OpenAI client."""

from __future__ import annotations

import base64
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from sparrow_vllm.serving.vllm.runners import RUNNERS as MODEL_RUNNERS
from tests.toy_models import RUNNERS

ADAPTER_LOG = {
    "v1": "Sparrow runner adapter: V1 model runner (SparrowProposer)",
    "v2": "Sparrow runner adapter: Model Runner V2 (SparrowSpeculator)",
}


def _video_data_url(path: Path, frames: int = 8, size: int = 112) -> str:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 2.0, (size, size))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    writer.release()
    return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()


def _spec(draft: Path, **sparrow_keys) -> list[str]:
    spec = {"method": "sparrow", "model": str(draft), "num_speculative_tokens": 3, **sparrow_keys}
    return ["--speculative-config", json.dumps(spec)]


def _counter(metrics_text: str, name: str) -> float:
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _samples(metrics_text: str, sample: str) -> list[tuple[dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.labels, s.value) for family in text_string_to_metric_families(metrics_text)
            for s in family.samples if s.name == sample]


def _check_sparrow_metrics(metrics: str, in_flight: str, model: str, runner: str) -> None:
    """Sparrow's metrics on /metrics, from the engine-core process, with vLLM's labels."""

    def value(sample: str, text: str = metrics) -> float:
        [(labels, found)] = _samples(text, sample)
        assert (labels["model_name"], labels["engine"]) == (model, "0"), labels
        return found

    assert value("vllm:sparrow_draft_cache_blocks") == 8
    assert value("vllm:sparrow_draft_cache_blocks_in_use", in_flight) > 0
    assert value("vllm:sparrow_starved_requests_total") > 0
    # shown with vLLM's labels (value() checks them); its count is not checked: none are
    # expected here (vLLM's CPU blocks, 128 tokens, are longer than these prompts, and this
    # draft's 24-row window has dropped a request's first rows by its end), and
    # tests/integration/test_tensor_parallel.py counts reused rows
    value("vllm:sparrow_reused_rows_total")
    steps = value("vllm:sparrow_drafts_per_step_count")
    assert steps > 0
    at_most_k = [v for labels, v in _samples(metrics, "vllm:sparrow_drafts_per_step_bucket") if labels["le"] == "3.0"]
    assert at_most_k == [steps]
    assert value("vllm:sparrow_draft_step_seconds_count") > 0 and value("vllm:sparrow_draft_step_seconds_sum") > 0
    [(info, one)] = _samples(metrics, "vllm:sparrow_adapter_info")
    assert one == 1 and (info["runner"], info["adapter"]) == (runner, MODEL_RUNNERS[runner].adapter), info


@pytest.mark.parametrize("runner", RUNNERS)
def test_chat_with_video_streaming_and_not(toy_models, start_server, tmp_path, runner):
    from openai import OpenAI

    # Sparrow's own key in --speculative-config reaches the engine process; the smallest
    # budget (8 blocks of 16 rows) starves requests below
    server = start_server(toy_models["vl_target"], _spec(toy_models["vl_draft"], text_row_budget=128),
                          runner)
    server.wait_ready()
    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    model = client.models.list().data[0].id
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "video_url", "video_url": {"url": _video_data_url(tmp_path / "v.mp4")}},
                {"type": "text", "text": "ab cd ef"},
            ],
        }
    ]
    full = client.chat.completions.create(
        model=model, messages=messages, max_tokens=16, temperature=0.0, logprobs=True, top_logprobs=2,
        extra_body={"ignore_eos": True, "return_tokens_as_token_ids": True},
    )
    assert full.usage.completion_tokens == 16
    # Greedy: each token is the target's own top choice at its position (the logprobs come
    # from the verifying forward); a draft token taken without verification would not be.
    # vLLM lists the chosen token first, then the top ones: with 2 listed, a chosen token
    # that is not the top one has the top one after it, more likely.
    chosen = full.choices[0].logprobs.content
    assert len(chosen) == 16
    assert all(t.logprob == max(top.logprob for top in t.top_logprobs) for t in chosen), chosen

    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=16, temperature=0.0, stream=True,
        extra_body={"ignore_eos": True},
    )
    pieces: list[str] = []
    in_flight = ""
    for chunk in stream:
        pieces += [chunk.choices[0].delta.content or ""] if chunk.choices else []
        if len(pieces) == 4:  # mid-request: /metrics while the draft cache holds its rows
            in_flight = requests.get(server.url + "/metrics", timeout=10).text
    streamed = "".join(pieces)
    assert streamed and streamed == full.choices[0].message.content
    # 4 requests of 100 text rows at once: their prefill needs more blocks than the draft
    # cache has (the draft's 24-row window frees a request's old blocks only after), so
    # requests give up rows (starved)
    words = ["ab", "cd", "ef", "gh", "ij", "kl", "mn", "op"]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": " ".join(words[i:i + 4] * 25)}], max_tokens=8,
            temperature=0.0, extra_body={"ignore_eos": True}), range(4)))

    metrics = requests.get(server.url + "/metrics", timeout=10).text
    (tmp_path / "metrics.txt").write_text(metrics)  # kept with the server's log
    assert _counter(metrics, "vllm:spec_decode_num_drafts_total") > 0
    assert _counter(metrics, "vllm:spec_decode_num_draft_tokens_total") > 0
    # drafts were accepted, so the tokens checked above include verified draft tokens
    assert _counter(metrics, "vllm:spec_decode_num_accepted_tokens_total") > 0
    _check_sparrow_metrics(metrics, in_flight, model, runner)
    # The plugin's INFO lines reach vLLM's own log, and name the runner adapter that drafted.
    log = server.log.read_text()
    assert ADAPTER_LOG[runner] in log
    assert "Sparrow draft cache: 8 blocks x 16 text rows = 128 rows" in log
    assert "text_row_budget=128" in log and "Sparrow draft attention:" in log
    other = next(r for r in RUNNERS if r != runner)
    assert ADAPTER_LOG[other] not in log


def test_bad_draft_fails_at_startup_with_the_fix(toy_models, start_server, tmp_path):
    bad = tmp_path / "bad-draft"
    shutil.copytree(toy_models["vl_draft"], bad)
    config = json.loads((bad / "config.json").read_text())
    config["hidden_size"] = 256
    config["sparrow"]["target_hidden_size"] = 256
    (bad / "config.json").write_text(json.dumps(config))
    server = start_server(toy_models["vl_target"], _spec(bad))
    code = server.proc.wait(timeout=240)
    log = server.log.read_text()
    assert code != 0
    assert "hidden_size=256 but the target has 128" in log
    assert "train one with `sparrow-vllm train --target <target dir>` on video data" in log
    assert "self-distill" not in log


def test_text_budget_too_small_fails_at_startup_with_the_fix(toy_models, start_server):
    server = start_server(toy_models["vl_target"], _spec(toy_models["vl_draft"], text_row_budget=16))
    code = server.proc.wait(timeout=240)
    log = server.log.read_text()
    assert code != 0
    assert "text_row_budget=16 is below the 128 text rows" in log
    assert "raise text_row_budget in --speculative-config" in log
