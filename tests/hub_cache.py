"""A local Hugging Face cache laid out as `hf download` writes it, for offline tests of drafts
named by hub id: `<HF_HOME>/hub/models--org--name/` with `blobs/`, `refs/<ref>` holding the
commit hash, and `snapshots/<commit>/` whose files link to the blobs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

COMMIT = "5a7c3e0f9b1d2c4e6f8a0b2c4d6e8f0a1b3c5d7e"  # any 40 hex digits


def lay_out_hub_cache(hf_home: Path, repo_id: str, source: Path, commit: str = COMMIT,
                      refs: tuple[str, ...] = ("main",)) -> Path:
    """Put the files of `source` in the cache under `hf_home` as `repo_id` at `commit`,
    with each of `refs` pointing at it; returns the snapshot directory."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for file in sorted(source.iterdir()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def offline_hub_env(hf_home: Path) -> dict[str, str]:
    """The environment of a process that must find hub ids in `hf_home`'s cache only."""
    return {"HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub"), "HF_HUB_OFFLINE": "1"}


def use_offline_hub(monkeypatch: pytest.MonkeyPatch, hf_home: Path) -> Path:
    """Point this process at `hf_home`'s cache, offline; returns the hub cache directory.
    huggingface_hub reads HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE into its `constants` once,
    when it is imported, so those are patched too (the environment is for child processes)."""
    import huggingface_hub.constants as constants

    for name, value in offline_hub_env(hf_home).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hf_home / "hub"
