"""Feature extraction at scale, as a user runs it (`sparrow-vllm extract-features` in a
subprocess) on the committed toy-world target, with a manifest of videos and images:
vLLM regeneration gives HF's greedy answers; --workers 2 on a local 2-CPU Ray cluster gives
the records of --workers 1; a worker killed mid-run is restarted and its shard resumed, and a run interrupted
(Ctrl-C) then rerun resumes; either way no row is missing or done twice."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparrow_vllm.toy_world.dataset import write_dataset
from sparrow_vllm.training.features import INDEX_FILE, FeatureShards
from tests.processes import interruptible

pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parents[2]
TARGET = REPO / "models" / "toy-world" / "target"
ENV = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
IMAGE_QUESTIONS = ("what is the number ?", "how many shapes are there ?")


def _with_images(manifest: Path, num_images: int) -> Path:
    """The toy-world manifest plus rows asking about one frame of a clip, as a PNG."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for i in range(num_images):
        frame = np.load(manifest.parent / rows[i]["video"])[0]
        name = f"images/{i}.png"
        (manifest.parent / "images").mkdir(exist_ok=True)
        Image.fromarray(frame).save(manifest.parent / name)
        question = IMAGE_QUESTIONS[i % len(IMAGE_QUESTIONS)]
        rows.append({"id": f"image-{i}", "image": name, "conversations": [
            {"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": "one ."}]})
    out = manifest.with_name("mixed.jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def _command(manifest: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sparrow_vllm.cli", "extract-features", "--target", str(TARGET),
            "--data", str(manifest), "--out", str(out), "--shard-size", "3", *extra]


def _extract(manifest: Path, out: Path, *extra: str) -> str:
    proc = subprocess.run(_command(manifest, out, *extra), env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stderr


def _assert_same_records(a: Path, b: Path, exact: bool = True) -> None:
    ra, rb = FeatureShards(a), FeatureShards(b)
    assert ra.index["done"] and rb.index["done"]
    assert ra.index["shards"] == rb.index["shards"] and ra.index["skips"] == rb.index["skips"]
    assert len(ra) == len(rb)
    for i in range(len(rb)):
        assert ra[i].keys() == rb[i].keys()
        for key, value in rb[i].items():
            if value.is_floating_point() and not exact:
                torch.testing.assert_close(ra[i][key], value, rtol=1e-4, atol=1e-4)
            else:
                assert torch.equal(ra[i][key], value), (i, key)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scale")
    manifest = write_dataset(root / "data", num=6, frames=[8], seed=7, questions=["count", "number", "first"])
    return _with_images(manifest, 2)


@pytest.fixture(scope="module")
def vllm_one_worker(mixed, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("w1") / "features"
    _extract(mixed, out, "--regenerate", "24")
    return out


def test_vllm_regeneration_equals_hf_greedy(mixed, vllm_one_worker, tmp_path):
    out = tmp_path / "hf"
    _extract(mixed, out, "--regenerate", "24", "--regenerate-with", "hf")
    vllm, hf = FeatureShards(vllm_one_worker), FeatureShards(out)
    assert len(vllm) == len(hf) == 8
    for i in range(len(hf)):
        assert vllm[i]["input_ids"].tolist() == hf[i]["input_ids"].tolist(), f"row {i}: answers differ"
        # the answer is the target's greedy continuation: each answer token is the argmax
        start, ids = int(hf[i]["loss_start"]), hf[i]["input_ids"]
        assert torch.equal(vllm[i]["target_next"][start - 1 : len(ids) - 1], ids[start:])


def test_two_ray_workers_write_the_records_of_one(mixed, vllm_one_worker, tmp_path):
    out = tmp_path / "w2"
    log = _extract(mixed, out, "--regenerate", "24", "--workers", "2")
    assert "starting 2 extraction workers on Ray ({'num_cpus': 1})" in log
    # answers, ids, positions and masks are exact; states agree to float tolerance (the
    # workers run with one thread each, the single process with two)
    _assert_same_records(out, vllm_one_worker, exact=False)
    assert not (out / "staging").exists()


def _wait_for(condition, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.stderr.read()[-4000:] if proc.stderr else ""
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _staged_rows(out: Path) -> int:
    return len(list(out.glob("staging/*/row-*.safetensors")))


def _start(manifest: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(_command(manifest, out, *extra), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=interruptible)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


HF_REGENERATE = ("--regenerate", "24", "--regenerate-with", "hf")
KILL_ARGS = (*HF_REGENERATE, "--workers", "2")


@pytest.fixture(scope="module")
def slow_rows(tmp_path_factory) -> tuple[Path, Path]:
    """24 rows of 64-frame clips (about 0.5 s a row with HF regeneration on one core),
    so that a run is still going long after its first row is saved; and their records
    from one worker."""
    root = tmp_path_factory.mktemp("kill")
    manifest = write_dataset(root / "data", num=24, frames=[64], seed=8, questions=["count", "number"])
    _extract(manifest, root / "reference", *HF_REGENERATE)
    return manifest, root / "reference"


def test_a_killed_worker_is_restarted_and_its_shard_resumed(slow_rows, tmp_path):
    manifest, reference = slow_rows
    out = tmp_path / "features"
    proc = _start(manifest, out, *KILL_ARGS)
    try:
        _wait_for(lambda: _staged_rows(out) >= 1, 300, proc)
        # SIGKILL a worker mid-shard (at least 23 rows are left)
        killed = subprocess.run(["pkill", "-9", "-f", "ray::ExtractionWorker"], check=False)
        assert killed.returncode == 0
        _, err = proc.communicate(timeout=300)
    finally:
        _stop(proc)
    assert proc.returncode == 0, err[-4000:]
    # the same rows in the same shards, each once, with the same records
    _assert_same_records(out, reference, exact=False)


def test_an_interrupted_run_resumes_when_rerun(slow_rows, tmp_path):
    manifest, reference = slow_rows
    out = tmp_path / "features"
    proc = _start(manifest, out, *KILL_ARGS)
    try:
        _wait_for(lambda: _staged_rows(out) >= 1, 300, proc)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, with at least 23 rows left
        proc.wait(timeout=120)
    finally:
        _stop(proc)
    index = json.loads((out / INDEX_FILE).read_text())
    assert not index["done"]
    log = _extract(manifest, out, *KILL_ARGS)
    assert re.search(r"resuming extraction in \S+: \d+ of 24 rows already done", log), log[-3000:]
    _assert_same_records(out, reference, exact=False)
