"""Toy targets and briefly trained drafts for the engine tests; engines run in subprocesses."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sparrow_vllm.draft.checkpoint import save_draft
from sparrow_vllm.draft.eagle_export import export_eagle
from sparrow_vllm.draft.factory import new_draft
from sparrow_vllm.engine_job import EngineJobError
from sparrow_vllm.engine_job import run_engine_job as harness_run_engine_job
from sparrow_vllm.families import load_family
from sparrow_vllm.serving.vllm.runners import RUNNERS as MODEL_RUNNERS
from sparrow_vllm.serving.vllm.runners import runner_env as registry_runner_env
from sparrow_vllm.toy_targets import build_toy_target
from sparrow_vllm.training.self_distill import SelfDistillSettings, self_distill

JOB = Path(__file__).parent / "integration" / "engine_job.py"
# Test-only settings of every engine the tests start, on top of the runner's own
# environment (runners.runner_env(runner, cpu=True): the CPU build, and Model Runner V2's
# Triton kernels in Triton's interpreter).
ENGINE_ENV = {
    "VLLM_TARGET_DEVICE": "cpu",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_ALLOW_INSECURE_SERIALIZATION": "1",  # collective_rpc with test functions
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TRITON_INTERPRET": "0",  # the kernel tests turn the interpreter on in their process
}
# The engine tests run on both of vLLM's model runners. V1 is what vLLM picks on this CPU
# machine; Model Runner V2 (every CUDA machine's default) runs here with its Triton kernels
# in Triton's interpreter (the registry's CPU recipe for V2).
RUNNERS = tuple(MODEL_RUNNERS)
DISTILL = SelfDistillSettings(num_prompts=1024, steps=1500, seed=0)


def _trained_draft(root: Path, target: Path, name: str, **fields) -> Path:
    fresh = save_draft(root / f"{name}-init", new_draft(load_family(target), **fields))
    return self_distill(target, fresh, root / name, DISTILL)


def build_toy_models(root: Path) -> dict[str, Path]:
    """Text and Qwen2.5-VL toy targets with briefly self-distilled drafts (~4 min on CPU)."""
    text = build_toy_target("qwen2", root / "text-target")
    vl = build_toy_target("qwen2_5_vl", root / "vl-target", seed=1)
    text_draft = _trained_draft(root, text, "text-draft", fc_bias=False)
    return {
        "text_target": text,
        "text_draft": text_draft,
        "text_eagle": export_eagle(text_draft, root / "text-eagle"),
        "vl_target": vl,
        "vl_draft": _trained_draft(root, vl, "vl-draft", feature_layer="penultimate", window=24),
    }


# The families beyond Qwen2.5-VL: a toy target each and a briefly self-distilled draft
# reading the final hidden state (the one layer every family's vLLM model returns).
FAMILY_ARCHES = ("qwen2_vl", "qwen3_vl", "llava_onevision")
FAMILY_DISTILL = SelfDistillSettings(num_prompts=512, steps=600, seed=0)


def build_family_models(root: Path) -> dict[str, dict[str, Path]]:
    """arch -> {"target", "draft"} for FAMILY_ARCHES (~1 min each on CPU)."""
    out = {}
    for i, arch in enumerate(FAMILY_ARCHES):
        target = build_toy_target(arch, root / f"{arch}-target", seed=10 + i)
        fresh = save_draft(root / f"{arch}-draft-init", new_draft(load_family(target)))
        out[arch] = {"target": target, "draft": self_distill(target, fresh, root / f"{arch}-draft", FAMILY_DISTILL)}
    return out


def worker_cpu_env() -> dict[str, str]:
    """`make test` runs two pytest-xdist workers on the 2-core CI machine: each worker's
    engines bind their OpenMP threads to a core of its own (vLLM's automatic binding would
    put both engines' threads on every core). Empty outside xdist; a test that needs
    several ranks (tensor parallel) sets its own binding."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cpus = sorted(os.sched_getaffinity(0))
    if worker is None or count < 2 or len(cpus) < count:
        return {}
    share = len(cpus) // count
    index = int(worker.removeprefix("gw")) % count
    return {"VLLM_CPU_OMP_THREADS_BIND": ",".join(str(c) for c in cpus[index * share:(index + 1) * share])}


def runner_env(runner: str) -> dict[str, str]:
    """Environment for an engine (or `vllm serve`) on `runner` ("v1" or "v2")."""
    return {**ENGINE_ENV, **worker_cpu_env(), **registry_runner_env(runner, cpu=True)}


def assert_ran_on(result: dict, runner: str, sparrow: bool = True) -> None:
    """The engine job ran on `runner`, and (for Sparrow) its adapter drafted."""
    info = result["runner_info"]
    assert MODEL_RUNNERS[runner].runner_class in info["runner_bases"], info
    if sparrow:
        assert info["adapter"] == MODEL_RUNNERS[runner].adapter, info
        assert info["sparrow_adapter"] == runner and info["sparrow_steps"] > 0, info


def run_engine_job(
    job: dict, tmp_path: Path, timeout: float = 600, runner: str = "v1", env: dict | None = None
) -> dict:
    """Run engine_job.py in a fresh process (one engine at a time) on `runner` (with `env`
    added to its environment) and return its JSON; its log is kept beside the job."""
    workdir = Path(tempfile.mkdtemp(dir=tmp_path))
    # The engine core runs in this subprocess: every request is queued before the first
    # step, so batches (and so drafts) are the same from run to run.
    env = {**runner_env(runner), "VLLM_ENABLE_V1_MULTIPROCESSING": "0", **(env or {})}
    try:
        return harness_run_engine_job(JOB, job, workdir, "engine", env=env, timeout=timeout, tail_chars=10_000)
    except EngineJobError as error:
        raise AssertionError(str(error)) from None


def sparrow(draft: Path, k: int = 3, adaptive: bool = False) -> dict:
    """Sparrow's speculative config. K drafts every step unless `adaptive` (the serving
    default): tests that prove drafts are made and accepted on every step need that, and
    the briefly trained test drafts are weak enough for the adaptive policy to stop drafting."""
    spec = {"method": "sparrow", "model": str(draft), "num_speculative_tokens": k}
    return spec if adaptive else {**spec, "adaptive_draft_length": False}
