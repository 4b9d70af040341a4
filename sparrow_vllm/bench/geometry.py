"""Real geometry without real weights: a target with a real model's shapes (config only;
vLLM's `load_format="dummy"` fills random weights), Sparrow and eagle drafts of matching
shapes, and an in-engine timer that splits each decode step into target verify time and
drafter time. benchmarks/real_geometry.py drives it.

Models (`build_models`): the toy-world target's config.json with its geometry keys
overridden from a `Geometry` (`SCALES`: Qwen2.5-VL-7B's, or a small one for CPU smoke
tests), its tokenizer, chat template and processor files copied unchanged (so toy-world
video requests with N visual tokens work exactly as on the toy world), and no weights.
One random draft network (one decoder layer of the target's width and heads, FC without
bias) is written twice: as a Sparrow checkpoint (the Sparrow loader reads its own
safetensors, whatever the engine's load format) and in vLLM's eagle form (vLLM's eagle
loader inherits the engine's load config, so under `load_format="dummy"` its weights are
random too; the file is there for other load formats).

Engine job (`run_job`, in its own process: `python -m sparrow_vllm.bench.geometry JOB
RESULT`): per (visual tokens, batch) it queues `batch` toy-world requests, steps the
engine until it has recorded `skip_steps + decode_steps` full decode steps (every request
of the batch decoding with K drafts, so the target verifies K+1 tokens per request), then
aborts the requests. The worker's runner is wrapped (`_install_step_timer`): each step is
`execute_model` + `sample_tokens`, the drafter is the runner's `propose` (V1: `drafter`,
Model Runner V2: `speculator`), the target forward is V1's `_model_forward` or V2's model
call (eager; under CUDA graphs on V2 it is not seen and left out). Every timed call
synchronises CUDA before and after, so the numbers are per phase, without async overlap.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TOY_TARGET = Path(__file__).resolve().parents[2] / "models" / "toy-world" / "target"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
NOT_COPIED = ("config.json", "toy_world_accuracy.json")  # written anew / about the toy's weights


@dataclass(frozen=True)
class Geometry:
    """The shape keys of a Qwen2.5-VL config: text model and vision tower."""

    name: str
    text: dict[str, Any]
    vision: dict[str, Any]
    dtype: str


QWEN25_VL_7B = Geometry(
    name="Qwen2.5-VL-7B-Instruct",
    text={
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
        "max_position_embeddings": 128000, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "mrope_section": [16, 24, 24],
    },
    vision={
        "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
        "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
        "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
    },
    dtype="bfloat16",
)
# Small enough for two CPU cores; the same structure (GQA, M-RoPE, windowed vision tower).
SMOKE = Geometry(
    name="smoke",
    text={
        "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024,
        "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "mrope_section": [8, 12, 12],
    },
    vision={
        "depth": 2, "hidden_size": 128, "intermediate_size": 256, "num_heads": 4,
        "out_hidden_size": 256, "patch_size": 14, "spatial_merge_size": 2,
        "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [1],
    },
    dtype="float32",
)
SCALES: dict[str, Geometry] = {"7b": QWEN25_VL_7B, "smoke": SMOKE}

# Which of vLLM's model runners an engine uses. On a CPU, Model Runner V2 runs its Triton
# kernels in Triton's interpreter (SPARROW_TEST_TRITON_CPU=1: scripts/setup_cpu_env.py's
# start-up hook registers a "cpu" Triton backend), as in the tests.
RUNNER_ENV: dict[str, dict[str, str]] = {
    "v1": {"VLLM_USE_V2_MODEL_RUNNER": "0"},
    "v2": {"VLLM_USE_V2_MODEL_RUNNER": "1"},
}
CPU_RUNNER_ENV: dict[str, dict[str, str]] = {
    "v1": {"TRITON_INTERPRET": "0"},
    "v2": {"TRITON_INTERPRET": "1", "SPARROW_TEST_TRITON_CPU": "1"},
}


def speculative_config(method: str, draft: Path, k: int, adaptive_draft_length: bool = False) -> dict[str, Any]:
    """vLLM's speculative config for `method` with K drafts every step: Sparrow's adaptive
    draft length is off unless asked for, so that every decode step verifies K+1 tokens
    per request (random drafts are never accepted, and the policy would stop drafting)."""
    spec: dict[str, Any] = {"method": method, "model": str(draft), "num_speculative_tokens": k}
    if method == "sparrow":
        spec["adaptive_draft_length"] = adaptive_draft_length
    return spec


def runner_env(runner: str, cpu: bool) -> dict[str, str]:
    """Environment variables that put an engine on `runner` ("v1" or "v2")."""
    env = {**RUNNER_ENV[runner], "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}
    if cpu:
        env.update({"VLLM_TARGET_DEVICE": "cpu", **CPU_RUNNER_ENV[runner]})
    return env


def target_config(toy_config: dict[str, Any], geometry: Geometry) -> dict[str, Any]:
    """The toy target's config.json with `geometry`'s shape keys (token ids, processor
    settings and every other key stay the toy's)."""
    config = json.loads(json.dumps(toy_config))
    text, vision = config["text_config"], config["vision_config"]
    shape = dict(geometry.text)
    mrope, theta = shape.pop("mrope_section"), shape.pop("rope_theta")
    head_dim = shape["hidden_size"] // shape["num_attention_heads"]
    if 2 * sum(mrope) != head_dim:
        raise ValueError(f"mrope_section {mrope} must sum to head_dim / 2 = {head_dim // 2}")
    text.update(shape)
    text["layer_types"] = ["full_attention"] * shape["num_hidden_layers"]
    text["max_window_layers"] = shape["num_hidden_layers"]
    text["rope_parameters"] = {**text.get("rope_parameters", {}), "mrope_section": mrope, "rope_theta": theta}
    vision.update(geometry.vision)
    for part in (config, text, vision):
        part["dtype"] = geometry.dtype
    config["geometry"] = geometry.name
    return config


def build_target(out_dir: Path, geometry: Geometry, toy_target: Path = TOY_TARGET) -> Path:
    """A weightless target directory: scaled config.json plus the toy target's tokenizer,
    chat template and processor files. Load it with `load_format="dummy"`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in toy_target.iterdir():
        if path.is_file() and path.suffix not in WEIGHT_SUFFIXES and path.name not in NOT_COPIED:
            shutil.copy2(path, out_dir / path.name)
    toy_config = json.loads((toy_target / "config.json").read_text())
    (out_dir / "config.json").write_text(json.dumps(target_config(toy_config, geometry), indent=2) + "\n")
    return out_dir


def build_drafts(target: Path, out_dir: Path, seed: int = 0, command: list[str] | None = None) -> dict[str, Path]:
    """A random one-layer draft of the target's geometry, as a Sparrow checkpoint and in
    vLLM's eagle form: {"sparrow": dir, "eagle": dir}."""
    from sparrow_vllm.draft.checkpoint import save_draft
    from sparrow_vllm.draft.eagle_export import save_eagle_draft
    from sparrow_vllm.draft.factory import new_draft
    from sparrow_vllm.families import load_family

    model = new_draft(load_family(str(target)), seed=seed, fc_bias=False)
    sparrow = save_draft(out_dir / "sparrow-draft", model, command=command)
    eagle = save_eagle_draft(model, out_dir / "eagle-draft", command=command)
    return {"sparrow": sparrow, "eagle": eagle}


def build_models(out_dir: Path, geometry: Geometry, toy_target: Path = TOY_TARGET,
                 command: list[str] | None = None) -> dict[str, Path]:
    """Target and drafts under out_dir ({"target", "sparrow", "eagle"}); reused when
    out_dir already holds them for the same geometry."""
    target = out_dir / "target"
    drafts = {"sparrow": out_dir / "sparrow-draft", "eagle": out_dir / "eagle-draft"}
    stamp = out_dir / "geometry.json"
    wanted = {"geometry": geometry.name, "text": geometry.text, "vision": geometry.vision, "dtype": geometry.dtype}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted and all(
            (d / "model.safetensors").is_file() for d in drafts.values()):
        return {"target": target, **drafts}
    build_target(target, geometry, toy_target)
    drafts = build_drafts(target, out_dir, command=command)
    stamp.write_text(json.dumps(wanted, indent=1) + "\n")
    return {"target": target, **drafts}


# ---- in the engine process ----------------------------------------------------------------


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _adapter(runner: Any) -> Any:
    """The runner's drafter: `drafter` on the V1 runner, `speculator` on Model Runner V2."""
    return getattr(runner, "speculator", None) or getattr(runner, "drafter", None)


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


def _install_step_timer(worker: Any, k: int) -> dict[str, Any]:
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
    adapter = _adapter(runner)
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
    info = llm.collective_rpc(_install_step_timer, kwargs={"k": k})[0]
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


def run_in_subprocess(job: dict[str, Any], env: dict[str, str], workdir: Path, name: str,
                      timeout: float | None = None) -> dict[str, Any]:
    """Run `job` in a fresh process with `env` added (one engine at a time) and return its
    result; the engine's log is kept in workdir/name.log."""
    workdir.mkdir(parents=True, exist_ok=True)
    job_file, result_file, log_file = (workdir / f"{name}{suffix}" for suffix in (".job.json", ".result.json", ".log"))
    job_file.write_text(json.dumps(job, indent=1))
    with log_file.open("w") as log:
        proc = subprocess.run([sys.executable, "-m", "sparrow_vllm.bench.geometry", str(job_file), str(result_file)],
                              env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                              check=False)
    if proc.returncode != 0:
        tail = log_file.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"engine run {name} failed ({proc.returncode}); log {log_file}:\n{tail}")
    return json.loads(result_file.read_text())


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    job_path, result_path = sys.argv[1], sys.argv[2]
    with open(job_path) as f:
        result = run_job(json.load(f))
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
