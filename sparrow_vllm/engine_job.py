"""One vLLM engine in its own process: the engine-job harness `check`, the benchmarks and the
tests share.

The parent writes the job as JSON and runs `python -m CHILD JOB.json RESULT.json` (or a
script path) with a runner's environment (sparrow_vllm.serving.vllm.runners.runner_env) on
top of its own; the child runs the engine, writes its result as JSON and exits. Under
WORKDIR, NAME.job.json, NAME.result.json and NAME.log (the child's stdout and stderr) lie
side by side. A child that fails, times out or writes no result raises EngineJobError
naming the job, the exit code, the first error line of the log and its last lines.

The child side: `child_main(run_job)` reads the job, calls run_job(job) and writes what it
returns.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sparrow_vllm.errors import EngineJobError

logger = logging.getLogger(__name__)

# An in-process engine (its core in the job's process, so a worker can be wrapped and read
# with collective_rpc(function), which needs insecure serialization on).
IN_PROCESS_ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}
TAIL_CHARS = 4000


def job_files(workdir: Path, name: str) -> tuple[Path, Path, Path]:
    """(job, result, log) paths of job `name` under workdir."""
    return workdir / f"{name}.job.json", workdir / f"{name}.result.json", workdir / f"{name}.log"


def run_engine_job(child: str | Path, job: Mapping[str, Any], workdir: Path, name: str, *,
                   env: Mapping[str, str] | None = None, env_defaults: Mapping[str, str] | None = None,
                   timeout: float | None = None, child_args: Sequence[str] = (),
                   tail_chars: int = TAIL_CHARS) -> dict[str, Any]:
    """Run `job` in a fresh process and return the JSON it wrote.

    child: a module name (run as `python -m child`) or the Path of a script.
    env: added to this process's environment (overriding it); env_defaults: only where this
    process's environment does not set them. timeout: seconds (None: no limit).
    child_args: put before the job and result paths on the child's command line.
    tail_chars: how much of the log's end an error quotes.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    job_file, result_file, log_file = job_files(workdir, name)
    job_file.write_text(json.dumps(job, indent=1, default=str))
    result_file.unlink(missing_ok=True)
    command = [sys.executable, *(["-m", child] if isinstance(child, str) else [str(child)]),
               *child_args, str(job_file), str(result_file)]
    full_env = {**(env_defaults or {}), **os.environ, **(env or {})}
    logger.info("engine job %s: starting %s (log: %s)", name, child, log_file)
    with log_file.open("w") as log:
        try:
            proc = subprocess.run(command, env=full_env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise EngineJobError(_failure(name, child, f"timed out after {timeout:.0f} s", log_file,
                                          tail_chars)) from None
    if proc.returncode != 0 or not result_file.is_file():
        what = f"exit {proc.returncode}" + ("" if proc.returncode else ", no result written")
        raise EngineJobError(_failure(name, child, what, log_file, tail_chars))
    return json.loads(result_file.read_text())


def _failure(name: str, child: str | Path, what: str, log_file: Path, tail_chars: int) -> str:
    text = log_file.read_text(errors="replace")
    tail = text[-tail_chars:]
    if len(text) > tail_chars and "\n" in tail:
        tail = tail.split("\n", 1)[1]  # whole lines
    return (f"engine job {name} ({child}) failed ({what}): {root_cause(text.splitlines())} "
            f"(full log: {log_file}); last log lines:\n{tail}")


def root_cause(lines: Sequence[str]) -> str:
    """The first error line of an engine log (vLLM's own "see root cause above" excluded)."""
    errors = [line for line in lines if re.search(r"\b\w*(Error|Exception): ", line)
              and "Engine core initialization failed" not in line]
    return errors[0].split("] ", 1)[-1].strip() if errors else "no error line in the log"


def child_main(run_job: Callable[[dict[str, Any]], Any], argv: Sequence[str] | None = None,
               log_info: bool = True) -> None:
    """The child's entry point: argv is JOB.json RESULT.json (default: sys.argv[1:]);
    log_info: log INFO lines (bare messages) to stderr."""
    if log_info:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    job_path, result_path = argv if argv is not None else sys.argv[1:3]
    result = run_job(json.loads(Path(job_path).read_text()))
    Path(result_path).write_text(json.dumps(result))
