"""Where the session's toy models live, built once per run (or once per source change with
SPARROW_TEST_MODELS_DIR), and the builder pytest-xdist workers start in the background.

Run as `python -m tests.model_store NAME ROOT`: build model set NAME ("toy-models" or
"family-models") under ROOT unless it is there (one builder at a time: a lock file).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

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


def _builder(name: str):
    from tests.toy_models import build_family_models, build_toy_models

    return {"toy-models": build_toy_models, "family-models": build_family_models}[name]


def shared_root(tmp_path_factory) -> Path | None:
    """Where this run keeps model sets for all its processes: SPARROW_TEST_MODELS_DIR (a
    developer's convenience, kept across runs; CI leaves it unset), else under pytest-xdist
    the run's shared temporary folder; None for a single process (it builds its own)."""
    if os.environ.get("SPARROW_TEST_MODELS_DIR"):
        return Path(os.environ["SPARROW_TEST_MODELS_DIR"])
    if "PYTEST_XDIST_WORKER" in os.environ:
        return tmp_path_factory.getbasetemp().parent
    return None


def models(name: str, root: Path) -> dict:
    """Model set `name` under `root`, built now unless an earlier builder finished it (the
    first to take the lock builds; the others wait for it)."""
    target = root / f"{name}-{_sources_key()}"
    target.mkdir(parents=True, exist_ok=True)
    with open(target / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = target / "paths.json"
        if not done.exists():
            built = _builder(name)(target / "models")
            done.write_text(json.dumps(built, default=str))
        return _as_paths(json.loads(done.read_text()))


def start_background_build(name: str, root: Path) -> subprocess.Popen:
    """Build `name` under `root` in a child process (its log beside the models), so that
    a worker runs tests that need no model while it builds."""
    log = root / f"{name}-build.log"
    root.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "tests.model_store", name, str(root)], cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT)


if __name__ == "__main__":
    models(sys.argv[1], Path(sys.argv[2]))
