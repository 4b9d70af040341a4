"""One vLLM engine, requests run one at a time with timings: prefill (to the first
token), decode (the rest), every drafter call, and the spec-decode counters per request.

Run in its own process (one engine per process, one process at a time on a small machine):

    python -m sparrow_vllm.bench.offline JOB.json RESULT.json

JOB: {"target", "speculative_config" (or null), "engine" (LLM kwargs), "max_tokens",
"ignore_eos", "warmup" (ToyQuestion fields), "requests" [ToyQuestion fields, ...],
"flush_cache_mb" (optional: evict CPU caches before each drafter call),
"keep_prompt_token_ids" (optional: record each request's prompt token ids), "batch" (optional:
submit the requests in groups of this many, see `timed_group`)}.
The drafter is timed by wrapping the model runner's `drafter.propose` (see
`_install_drafter_timer`); in-process engines only (VLLM_ENABLE_V1_MULTIPROCESSING=0).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from sparrow_vllm.bench.speedup import acceptance, counter_delta
from sparrow_vllm.bench.toy_requests import ToyQuestion
from sparrow_vllm.engine_job import IN_PROCESS_ENGINE_ENV, child_main, run_engine_job

logger = logging.getLogger(__name__)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _install_drafter_timer(worker: Any, flush_mb: int = 0) -> bool:
    """Wrap the worker's drafter so each propose call records (end time, seconds). flush_mb
    > 0 first writes that many MiB of memory (not timed), so every call starts with the CPU
    caches cold, whatever the target just read."""
    import torch

    drafter = worker.model_runner.drafter
    drafter.bench_calls = []
    propose = drafter.propose
    flush = torch.zeros(flush_mb * 2**18, dtype=torch.float32) if flush_mb else None

    def timed_propose(*args: Any, **kwargs: Any) -> Any:
        if flush is not None:
            flush.add_(1.0)
        _sync()
        start = time.perf_counter()
        out = propose(*args, **kwargs)
        _sync()
        end = time.perf_counter()
        drafter.bench_calls.append((end, end - start))
        return out

    drafter.propose = timed_propose
    return True


def _take_drafter_calls(worker: Any) -> list[tuple[float, float]]:
    calls, worker.model_runner.drafter.bench_calls = worker.model_runner.drafter.bench_calls, []
    return calls


def _spec_counters(llm: Any) -> dict[str, object]:
    return {m.name: getattr(m, "values", None) or getattr(m, "value", None)
            for m in llm.get_metrics() if m.name.startswith("vllm:spec_decode")}


def timed_request(llm: Any, request_id: str, prompt: dict[str, Any], params: Any, timed_drafter: bool,
                  keep_prompt_ids: bool = False) -> dict:
    """Run one request alone through the engine's step loop and time its phases."""
    engine = llm.llm_engine
    before = _spec_counters(llm)
    start = time.perf_counter()
    engine.add_request(request_id, prompt, params)
    first_token_at = None
    final = None
    steps = 0
    while engine.has_unfinished_requests():
        outputs = engine.step()
        steps += 1
        for out in outputs:
            if first_token_at is None and out.outputs and out.outputs[0].token_ids:
                first_token_at = time.perf_counter()
            if out.finished:
                final = out
    end = time.perf_counter()
    if final is None or first_token_at is None:
        raise RuntimeError(f"request {request_id} finished without output")
    record = {
        "prompt_tokens": len(final.prompt_token_ids),
        "output_token_ids": list(final.outputs[0].token_ids),
        "text": final.outputs[0].text,
        "prefill_s": first_token_at - start,
        "decode_s": end - first_token_at,
        "engine_steps": steps,
    }
    if keep_prompt_ids:
        record["prompt_token_ids"] = list(final.prompt_token_ids)
    if timed_drafter:
        calls = llm.collective_rpc(_take_drafter_calls)[0]
        prefill_calls = [s for t, s in calls if t <= first_token_at]
        decode_calls = [s for t, s in calls if t > first_token_at]
        record["draft_prefill_s"] = sum(prefill_calls)
        record["draft_decode_s"] = decode_calls
        record["counters"] = counter_delta(before, _spec_counters(llm))
        record.update(acceptance(record["counters"]))
    return record


def timed_group(llm: Any, request_ids: list[str], prompts: list[dict[str, Any]], params: Any,
                timed_drafter: bool, keep_prompt_ids: bool = False) -> list[dict]:
    """Run len(prompts) requests submitted together (batch decoding) through the step loop.
    Each record's prefill_s runs from submission to its first token and decode_s from there
    to its own last token. The group's drafter calls, spec-decode counters and acceptance go
    on its first record (the others get empty ones): draft_decode_s holds only the calls of
    engine steps that all the group's requests decoded in (no prefill, none finished yet),
    draft_prefill_s every other call."""
    engine = llm.llm_engine
    before = _spec_counters(llm)
    start = time.perf_counter()
    for request_id, prompt in zip(request_ids, prompts, strict=True):
        engine.add_request(request_id, prompt, params)
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    final: dict[str, Any] = {}
    full_steps: list[tuple[float, float]] = []  # (start, end) of steps every request decoded in
    while engine.has_unfinished_requests():
        all_decoding = len(first) == len(request_ids) and not final
        step_start = time.perf_counter()
        outputs = engine.step()
        step_end = time.perf_counter()
        if all_decoding:
            full_steps.append((step_start, step_end))
        for out in outputs:
            if out.outputs and out.outputs[0].token_ids:
                first.setdefault(out.request_id, step_end)
                last[out.request_id] = step_end
            if out.finished:
                final[out.request_id] = out
    missing = [r for r in request_ids if r not in final or r not in first]
    if missing:
        raise RuntimeError(f"requests {missing} finished without output")
    records = []
    for request_id in request_ids:
        out = final[request_id]
        record = {
            "prompt_tokens": len(out.prompt_token_ids),
            "output_token_ids": list(out.outputs[0].token_ids),
            "text": out.outputs[0].text,
            "prefill_s": first[request_id] - start,
            "decode_s": last[request_id] - first[request_id],
            "batch": len(request_ids),
        }
        if keep_prompt_ids:
            record["prompt_token_ids"] = list(out.prompt_token_ids)
        records.append(record)
    if timed_drafter:
        calls = llm.collective_rpc(_take_drafter_calls)[0]
        decode = [s for t, s in calls if any(a < t <= b for a, b in full_steps)]
        counters = counter_delta(before, _spec_counters(llm))
        for i, record in enumerate(records):
            record["draft_prefill_s"] = sum(s for t, s in calls) - sum(decode) if i == 0 else 0.0
            record["draft_decode_s"] = decode if i == 0 else []
            record["counters"] = counters if i == 0 else {}
            record.update(acceptance(record["counters"]))
    return records


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    from vllm import LLM, SamplingParams

    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
        raise RuntimeError("set VLLM_ENABLE_V1_MULTIPROCESSING=0: the drafter timer and the step "
                           "loop need the engine in this process")
    spec = job.get("speculative_config")
    llm = LLM(model=job["target"], speculative_config=spec, seed=0, disable_log_stats=False,
              limit_mm_per_prompt={"video": 1, "image": 1}, **job.get("engine", {}))
    if spec:
        llm.collective_rpc(_install_drafter_timer, kwargs={"flush_mb": job.get("flush_cache_mb", 0)})
    tokenizer = llm.get_tokenizer()
    params = SamplingParams(temperature=job.get("temperature", 0.0), max_tokens=job["max_tokens"],
                            ignore_eos=job.get("ignore_eos", True))
    batch = job.get("batch", 1)
    if batch > 1:
        return {"job": job, "requests": _run_groups(llm, job, tokenizer, params, bool(spec), batch)}
    if job.get("warmup"):
        timed_request(llm, "warmup", ToyQuestion(**job["warmup"]).offline_prompt(tokenizer), params, bool(spec))
    records = []
    for i, fields in enumerate(job["requests"]):
        question = ToyQuestion(**fields)
        record = timed_request(llm, f"r{i}", question.offline_prompt(tokenizer), params, bool(spec),
                               keep_prompt_ids=job.get("keep_prompt_token_ids", False))
        logger.info("request %d (%d frames, %d prompt tokens): prefill %.2fs decode %.2fs%s", i,
                    question.frames, record["prompt_tokens"], record["prefill_s"], record["decode_s"],
                    f" acceptance {record['acceptance_length']:.2f}" if spec else "")
        records.append({**fields, **record})
    return {"job": job, "requests": records}


def _run_groups(llm: Any, job: dict[str, Any], tokenizer: Any, params: Any, timed_drafter: bool,
                batch: int) -> list[dict]:
    """job["requests"] in consecutive groups of `batch` submitted together (after a warmup
    group of `batch` copies of job["warmup"] with distinct indices)."""
    requests = job["requests"]
    if len(requests) % batch:
        raise ValueError(f"{len(requests)} requests do not split into groups of batch {batch}: "
                         "ask for a multiple of the batch size")
    if job.get("warmup"):
        warm = [ToyQuestion(**{**job["warmup"], "index": job["warmup"]["index"] + i}) for i in range(batch)]
        timed_group(llm, [f"warmup{i}" for i in range(batch)], [q.offline_prompt(tokenizer) for q in warm],
                    params, timed_drafter)
    records = []
    for g in range(0, len(requests), batch):
        fields = requests[g : g + batch]
        questions = [ToyQuestion(**f) for f in fields]
        group = timed_group(llm, [f"r{g + i}" for i in range(batch)], [q.offline_prompt(tokenizer) for q in questions],
                            params, timed_drafter, keep_prompt_ids=job.get("keep_prompt_token_ids", False))
        head = group[0]
        logger.info("group of %d from request %d (%d frames): decode %.2fs%s%s", batch, g, questions[0].frames,
                    max(r["prefill_s"] + r["decode_s"] for r in group) - min(r["prefill_s"] for r in group),
                    f", {len(head['draft_decode_s'])} full-batch draft steps" if timed_drafter else "",
                    f", acceptance {head['acceptance_length']:.2f}" if head.get("acceptance_length") else "")
        records += [{**f, **r} for f, r in zip(fields, group, strict=True)]
    return records


def run_in_subprocess(job: dict[str, Any], workdir: Path, name: str, timeout: float | None = None) -> dict[str, Any]:
    """Run `job` in a fresh process (one engine at a time) and return its result; the
    engine's log is kept in workdir/name.log."""
    return run_engine_job("sparrow_vllm.bench.offline", job, workdir, name, env=IN_PROCESS_ENGINE_ENV,
                          env_defaults={"VLLM_CPU_KVCACHE_SPACE": "2"}, timeout=timeout)


if __name__ == "__main__":
    child_main(run_job)
