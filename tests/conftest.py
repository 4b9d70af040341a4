"""Shared test set-up: offline, CPU, deterministic."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")


import fcntl  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.toy_models import build_family_models, build_toy_models  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# what the toy models are built from: a change to any of it builds them anew
MODEL_SOURCES = ("tests/toy_models.py", "sparrow_vllm/toy_targets", "sparrow_vllm/training",
                 "sparrow_vllm/draft")


def _sources_key() -> str:
    digest = hashlib.sha256()
    for name in MODEL_SOURCES:
        path = REPO / name
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.relative_to(REPO).as_posix().encode() + file.read_bytes())
    return digest.hexdigest()[:16]


def _as_paths(tree):
    return {k: _as_paths(v) if isinstance(v, dict) else Path(v) for k, v in tree.items()}


def _models(name: str, build, tmp_path_factory) -> dict:
    """Build the session's toy models, or, with SPARROW_TEST_MODELS_DIR set (a developer's
    convenience: CI leaves it unset), reuse the ones an earlier session built there from
    the same sources (one builder at a time: a lock file)."""
    root = os.environ.get("SPARROW_TEST_MODELS_DIR")
    if not root:
        return build(tmp_path_factory.mktemp(name))
    target = Path(root) / f"{name}-{_sources_key()}"
    target.mkdir(parents=True, exist_ok=True)
    with open(target / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = target / "paths.json"
        if not done.exists():
            built = build(target / "models")
            done.write_text(json.dumps(built, default=str))
        return _as_paths(json.loads(done.read_text()))


@pytest.fixture(scope="session")
def toy_models(tmp_path_factory):
    return _models("toy-models", build_toy_models, tmp_path_factory)


@pytest.fixture(scope="session")
def family_models(tmp_path_factory):
    return _models("family-models", build_family_models, tmp_path_factory)
