"""The engine-job harness (sparrow_vllm/engine_job.py) with stand-in children: the job, the
result and the log side by side, the environment, and failures that name the job, the exit
code, the log's first error line and its last lines."""

from __future__ import annotations

import textwrap

import pytest

from sparrow_vllm.engine_job import (
    EngineJobError,
    child_main,
    job_files,
    root_cause,
    run_engine_job,
)

CHILD = """
import json, os, sys, time
args = sys.argv[1:]
job = json.load(open(args[-2]))
print("child args", args[:-2], flush=True)
if job.get("sleep"):
    time.sleep(job["sleep"])
if job.get("fail"):
    print("(EngineCore pid=1) ERROR [core.py:1] ValueError: no memory for the KV cache", file=sys.stderr)
    sys.exit(3)
if not job.get("no_result"):
    env = {k: os.environ.get(k) for k in job.get("env", [])}
    json.dump({"job": job, "env": env}, open(args[-1], "w"))
"""


@pytest.fixture
def child(tmp_path):
    path = tmp_path / "child.py"
    path.write_text(CHILD)
    return path


def test_the_result_comes_back_with_job_and_log_beside_it(child, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARROW_TEST_KEPT", "mine")
    monkeypatch.setenv("SPARROW_TEST_OVERRIDDEN", "mine")
    job = {"env": ["SPARROW_TEST_KEPT", "SPARROW_TEST_OVERRIDDEN", "SPARROW_TEST_ADDED", "SPARROW_TEST_DEFAULT"],
           "path": tmp_path}
    result = run_engine_job(child, job, tmp_path / "runs", "first", child_args=("--job",),
                            env={"SPARROW_TEST_OVERRIDDEN": "job", "SPARROW_TEST_ADDED": "job"},
                            env_defaults={"SPARROW_TEST_KEPT": "default", "SPARROW_TEST_DEFAULT": "default"})
    assert result["job"]["path"] == str(tmp_path)  # paths are written as strings
    assert result["env"] == {"SPARROW_TEST_KEPT": "mine", "SPARROW_TEST_OVERRIDDEN": "job",
                             "SPARROW_TEST_ADDED": "job", "SPARROW_TEST_DEFAULT": "default"}
    job_file, result_file, log_file = job_files(tmp_path / "runs", "first")
    assert job_file.is_file() and result_file.is_file()
    assert "child args ['--job']" in log_file.read_text()


def test_a_failing_child_names_the_job_exit_code_root_cause_and_log_tail(child, tmp_path):
    with pytest.raises(EngineJobError) as failure:
        run_engine_job(child, {"fail": True}, tmp_path, "sparrow")
    message = str(failure.value)
    assert message.startswith(f"engine job sparrow ({child}) failed (exit 3): ValueError: no memory for the KV cache")
    assert f"(full log: {tmp_path / 'sparrow.log'})" in message and message.endswith("for the KV cache\n")


def test_a_child_without_a_result_or_past_its_timeout_fails(child, tmp_path):
    with pytest.raises(EngineJobError, match=r"failed \(exit 0, no result written\)"):
        run_engine_job(child, {"no_result": True}, tmp_path, "quiet")
    with pytest.raises(EngineJobError, match=r"engine job slow .* failed \(timed out after 1 s\)"):
        run_engine_job(child, {"sleep": 30}, tmp_path, "slow", timeout=1)


def test_a_module_child_runs_with_python_m_and_child_main(tmp_path):
    (tmp_path / "stand_in_job.py").write_text(textwrap.dedent("""
        from sparrow_vllm.engine_job import child_main

        if __name__ == "__main__":
            child_main(lambda job: {"doubled": 2 * job["n"]})
    """))
    result = run_engine_job("stand_in_job", {"n": 21}, tmp_path, "module",
                            env={"PYTHONPATH": str(tmp_path)})
    assert result == {"doubled": 42}


def test_child_main_writes_what_the_job_returns(tmp_path):
    (tmp_path / "job.json").write_text('{"n": 2}')
    child_main(lambda job: {"n": job["n"] + 1}, [str(tmp_path / "job.json"), str(tmp_path / "result.json")],
               log_info=False)
    assert (tmp_path / "result.json").read_text() == '{"n": 3}'


def test_an_engine_failure_names_its_root_cause():
    lines = [
        "(VllmWorker-0 pid=1) ERROR 12-03 08:19:59 [multiproc_executor.py:953] ValueError: Available memory "
        "on node 0 (8.86/10.46 GiB) on startup is less than desired CPU memory utilization (0.92, 9.63 GiB).",
        "RuntimeError: Engine core initialization failed. See root cause above.",
    ]
    assert root_cause(lines).startswith("ValueError: Available memory on node 0")
    assert root_cause(["nothing to see"]) == "no error line in the log"
