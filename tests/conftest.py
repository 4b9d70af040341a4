"""Shared test set-up: offline, CPU, deterministic."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
# Under pytest-xdist (`make test` runs 2 workers on the 2-core CI machine) each worker, and
# every process it starts, computes on its share of the cores: two processes that each
# spin an OpenMP thread per core slow each other down several times over.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _WORKERS)))


import pytest  # noqa: E402

from tests.model_store import models, shared_root, start_background_build  # noqa: E402
from tests.toy_models import build_family_models, build_toy_models, worker_cpu_env  # noqa: E402

# ...and every vLLM engine a worker starts, directly or through a CLI, `vllm serve` or a Ray
# actor, binds its OpenMP threads to that worker's core: vLLM's automatic binding ignores
# OMP_NUM_THREADS and may put both workers' engines on one core (tests with several ranks
# set their own binding).
for _key, _value in worker_cpu_env().items():
    os.environ.setdefault(_key, _value)

# model set -> the fixture that hands it out; under pytest-xdist worker i starts building
# set i in the background as soon as it has collected the tests (if any test needs it)
MODEL_SETS = {"toy-models": "toy_models", "family-models": "family_models"}
_background: list = []


def pytest_collection_finish(session) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None or _WORKERS < 2:
        return
    needed = {f for item in session.items for f in getattr(item, "fixturenames", ())}
    index = int(worker.removeprefix("gw"))
    for i, (name, fixture) in enumerate(MODEL_SETS.items()):
        if i % _WORKERS == index and fixture in needed:
            root = shared_root(session.config._tmp_path_factory)
            _background.append(start_background_build(name, root))


def pytest_sessionfinish(session, exitstatus) -> None:
    """A build may still be needed by the other worker: wait for it, unless interrupted."""
    for process in _background:
        if exitstatus == pytest.ExitCode.INTERRUPTED:
            process.terminate()
        process.wait()


def _models(name: str, build, tmp_path_factory) -> dict:
    root = shared_root(tmp_path_factory)
    return build(tmp_path_factory.mktemp(name)) if root is None else models(name, root)


@pytest.fixture(scope="session")
def toy_models(tmp_path_factory):
    return _models("toy-models", build_toy_models, tmp_path_factory)


@pytest.fixture(scope="session")
def family_models(tmp_path_factory):
    return _models("family-models", build_family_models, tmp_path_factory)
