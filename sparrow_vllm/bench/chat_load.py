"""Concurrent streamed chat requests against an OpenAI-compatible server, timed per
request: time to first token (TTFT), time per output token after the first (TPOT), and
the answer. Used by the demo and by benchmarks/serve_bench.py."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


@dataclass
class ChatResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    total_s: float

    @property
    def tpot_s(self) -> float | None:
        """Decode time per output token after the first; None for one-token answers."""
        if self.completion_tokens < 2:
            return None
        return (self.total_s - self.ttft_s) / (self.completion_tokens - 1)


def chat_once(client: Any, model: str, messages: list[dict], max_tokens: int, ignore_eos: bool,
              temperature: float = 0.0, request_id: str | None = None) -> ChatResult:
    """One streamed chat completion (greedy unless `temperature` > 0); `request_id` goes to
    vLLM as X-Request-Id, which names the request in the engine (and in its step trace)."""
    start = time.perf_counter()
    first = None
    parts: list[str] = []
    prompt_tokens = tokens = 0
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=temperature, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": ignore_eos},
        extra_headers=None if request_id is None else {"X-Request-Id": request_id},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = time.perf_counter()
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            prompt_tokens, tokens = chunk.usage.prompt_tokens, chunk.usage.completion_tokens
    end = time.perf_counter()
    if first is None:
        first = end
    return ChatResult("".join(parts), prompt_tokens, tokens, first - start, end - start)


def run_load(client: Any, model: str, conversations: list[list[dict]], max_tokens: int,
             concurrency: int, ignore_eos: bool, temperature: float = 0.0,
             request_ids: list[str] | None = None) -> tuple[list[ChatResult], float]:
    """All conversations with at most `concurrency` in flight; results in input order and
    the wall time of the whole batch."""
    ids = request_ids if request_ids is not None else [None] * len(conversations)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda m, i: chat_once(client, model, m, max_tokens, ignore_eos, temperature, i),
                                conversations, ids))
    return results, time.perf_counter() - start


def load_summary(results: list[ChatResult], wall_s: float) -> dict[str, float]:
    tpots = [r.tpot_s for r in results if r.tpot_s is not None]
    tokens = sum(r.completion_tokens for r in results)
    return {
        "requests": len(results),
        "output_tokens": tokens,
        "prompt_tokens_mean": statistics.mean(r.prompt_tokens for r in results),
        "wall_s": wall_s,
        "output_tokens_per_s": tokens / wall_s,
        "requests_per_s": len(results) / wall_s,
        "ttft_mean_s": statistics.mean(r.ttft_s for r in results),
        "ttft_median_s": statistics.median(r.ttft_s for r in results),
        "tpot_mean_ms": 1000 * statistics.mean(tpots) if tpots else None,
        "tpot_median_ms": 1000 * statistics.median(tpots) if tpots else None,
    }
