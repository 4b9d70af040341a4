"""The real-geometry benchmark's engine job: an in-engine timer that splits each decode step
into target verify time and drafter time (benchmarks/real_geometry.py drives it, on the
models sparrow_vllm/bench/geometry.py builds).

`run_job` runs in its own process (`python -m sparrow_vllm.bench.geometry_job JOB RESULT`;
`run_in_subprocess` starts it with the engine-job harness): per (visual tokens, batch) it
queues `batch` toy-world requests, steps the engine until it has recorded
`skip_steps + decode_steps` full decode steps (every request of the batch decoding with K
drafts, so the target verifies K+1 tokens per request), then aborts the requests. The
worker's runner is wrapped (`install_step_timer`): each step is `execute_model` +
`sample_tokens`, the drafter is the runner's `propose` (V1: `drafter`, Model Runner V2:
`speculator`), the target forward is V1's `_model_forward` or V2's model call (eager; under
CUDA graphs on V2 it is not seen and left out). Every timed call synchronises CUDA before
and after, so the numbers are per phase, without async overlap.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from sparrow_vllm.engine_job import IN_PROCESS_ENGINE_ENV, child_main, run_engine_job
from sparrow_vllm.serving.vllm.runners import drafting_adapter, runner_env

logger = logging.getLogger(__name__)


def run_in_subprocess(job: dict[str, Any], runner: str, cpu: bool, workdir: Path, name: str,
                      timeout: float | None = None) -> dict[str, Any]:
    """Run `job` in a fresh process on `runner` ("v1" or "v2"; `cpu`: on a CPU build of
    vLLM) and return its result; the engine's log is kept in workdir/name.log."""
    return run_engine_job("sparrow_vllm.bench.geometry_job", job, workdir, name,
                          env={**runner_env(runner, cpu), **IN_PROCESS_ENGINE_ENV}, timeout=timeout)


# ---- in the engine process ----------------------------------------------------------------


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _step_record(scheduler_output: Any, k: int) -> dict[str, Any]:
    """What the scheduler asked of this step: requests, tokens, and whether it is a pure
    decode step with K drafts per request (no prefill chunk, no encoder input)."""
    scheduled = dict(scheduler_output.num_scheduled_tokens)
    spec = scheduler_output.scheduled_spec_decode_tokens or {}
    drafts = [len(spec.get(r, ())) for r in scheduled]
    decode = (not scheduler_output.scheduled_new_reqs and not scheduler_output.scheduled_encoder_inputs
              and bool(scheduled)
              and all(n == len(spec.get(r, ())) + 1 for r, n in scheduled.items()))
    return {"num_reqs": len(scheduled), "tokens": int(scheduler_output.total_num_scheduled_tokens),
            "decode": decode, "full_drafts": decode and all(d == k for d in drafts),
            "exec_s": 0.0, "sample_s": 0.0, "draft_s": 0.0, "draft_calls": 0, "forward_s": 0.0,
            "forward_calls": 0}


def _timed(fn: Any, on_done: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _sync()
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        _sync()
        on_done(time.perf_counter() - start, args, kwargs)
        return out

    return wrapper


def install_step_timer(worker: Any, k: int) -> dict[str, Any]:
    """Wrap the worker's runner so that every engine step leaves a record (see
    `_step_record`) with its execute_model, sample_tokens, drafter and target-forward
    seconds. Returns which runner and drafting adapter the engine uses."""
    runner = worker.model_runner
    state: dict[str, Any] = {"records": [], "current": None}
    runner.bench_steps = state

    def add(field: str, count: str | None = None) -> Any:
        def done(seconds: float, args: tuple, kwargs: dict) -> None:
            rec = state["current"]
            if rec is not None and not kwargs.get("dummy_run"):
                rec[field] += seconds
                if count:
                    rec[count] += 1
        return done

    execute_model = runner.execute_model

    def execute(scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("dummy_run") or not getattr(scheduler_output, "total_num_scheduled_tokens", 0):
            state["current"] = None
            return execute_model(scheduler_output, *args, **kwargs)
        state["current"] = _step_record(scheduler_output, k)
        state["records"].append(state["current"])
        return _timed(execute_model, add("exec_s"))(scheduler_output, *args, **kwargs)

    runner.execute_model = execute
    runner.sample_tokens = _timed(runner.sample_tokens, add("sample_s"))
    adapter = drafting_adapter(runner)
    if adapter is not None:
        adapter.propose = _timed(adapter.propose, add("draft_s", "draft_calls"))
    if hasattr(runner, "_model_forward"):  # V1: the target forward, eager or graphed
        runner._model_forward = _timed(runner._model_forward, add("forward_s", "forward_calls"))
    else:  # Model Runner V2 calls the model itself (eager mode only)
        _install_forward_hooks(runner.model, add("forward_s", "forward_calls"))
    return {
        "runner_bases": [f"{c.__module__}.{c.__name__}" for c in type(runner).__mro__],
        "adapter": None if adapter is None else f"{type(adapter).__module__}.{type(adapter).__name__}",
    }


def _install_forward_hooks(model: Any, done: Any) -> None:
    starts: list[float] = []

    def pre(module: Any, args: Any) -> None:
        _sync()
        starts.append(time.perf_counter())

    def post(module: Any, args: Any, output: Any) -> None:
        _sync()
        done(time.perf_counter() - starts.pop(), (), {})

    model.register_forward_pre_hook(pre)
    model.register_forward_hook(post)


def _qualifying(worker: Any, batch: int) -> int:
    return sum(r["full_drafts"] and r["num_reqs"] == batch for r in worker.model_runner.bench_steps["records"])


def _take_records(worker: Any) -> list[dict[str, Any]]:
    state = worker.model_runner.bench_steps
    records, state["records"], state["current"] = state["records"], [], None
    return records


def _spec_counters(llm: Any) -> dict[str, object]:
    return {m.name: getattr(m, "values", None) or getattr(m, "value", None)
            for m in llm.get_metrics() if m.name.startswith("vllm:spec_decode")}


def measure(llm: Any, prompts: list[dict[str, Any]], params: Any, batch: int, steps: int,
            tag: str) -> dict[str, Any]:
    """Queue `prompts` (one batch) and step the engine until the worker has recorded
    `steps` full decode steps of the whole batch (or the requests finish); then abort
    what is left. Returns the step records and the spec-decode counters of the run."""
    from sparrow_vllm.bench.speedup import acceptance, counter_delta

    engine = llm.llm_engine
    llm.collective_rpc(_take_records)
    before = _spec_counters(llm)
    ids = [f"{tag}-{i}" for i in range(len(prompts))]
    start = time.perf_counter()
    for request_id, prompt in zip(ids, prompts, strict=True):
        engine.add_request(request_id, prompt, params)
    engine_steps = 0
    while engine.has_unfinished_requests():
        engine.step()
        engine_steps += 1
        if llm.collective_rpc(_qualifying, args=(batch,))[0] >= steps:
            engine.abort_request(ids)
            break
    while engine.has_unfinished_requests():
        engine.step()
    counters = counter_delta(before, _spec_counters(llm))
    return {"records": llm.collective_rpc(_take_records)[0], "engine_steps": engine_steps,
            "wall_s": time.perf_counter() - start, "counters": counters, **acceptance(counters)}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One engine (one method, one runner) over every (visual tokens, batch) of the job."""
    from vllm import LLM, SamplingParams

    from sparrow_vllm.bench.toy_requests import ToyQuestion
    from sparrow_vllm.toy_world.dataset import frames_for_visual_tokens

    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
        raise RuntimeError("set VLLM_ENABLE_V1_MULTIPROCESSING=0: the step timer needs the engine in this process")
    k = job["speculative_config"]["num_speculative_tokens"]
    llm = LLM(model=job["target"], speculative_config=job["speculative_config"], load_format="dummy", seed=0,
              disable_log_stats=False, limit_mm_per_prompt={"video": 1}, **job["engine"])
    info = llm.collective_rpc(install_step_timer, kwargs={"k": k})[0]
    tokenizer = llm.get_tokenizer()
    params = SamplingParams(temperature=0.0, max_tokens=job["max_tokens"], ignore_eos=True, detokenize=False)
    steps = job["skip_steps"] + job["decode_steps"]

    def prompts(n: int, batch: int, first_index: int) -> list[dict[str, Any]]:
        frames = frames_for_visual_tokens(n)
        return [ToyQuestion(seed=job["scene_seed"], index=first_index + i, frames=frames,
                            question=job["question"]).offline_prompt(tokenizer) for i in range(batch)]

    warm = min(job["runs"], key=lambda r: (r["visual_tokens"], r["batch"]))
    measure(llm, prompts(warm["visual_tokens"], warm["batch"], 10_000), params, warm["batch"],
            min(steps, 3), "warmup")
    runs = []
    for i, run in enumerate(job["runs"]):
        n, batch = run["visual_tokens"], run["batch"]
        result = measure(llm, prompts(n, batch, 100 * i), params, batch, steps, f"r{i}")
        full = [r for r in result["records"] if r["full_drafts"] and r["num_reqs"] == batch]
        result["steps"] = full[job["skip_steps"]:steps]
        logger.info("%d visual tokens, batch %d: %d engine steps, %d full decode steps measured", n, batch,
                    result["engine_steps"], len(result["steps"]))
        runs.append({**run, **result})
    return {"job": job, "runner_info": info, "runs": runs}


if __name__ == "__main__":
    child_main(run_job)
