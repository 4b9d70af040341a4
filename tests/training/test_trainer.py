"""The draft trainer on a tiny toy-world target: learning, resume, DDP, both draft forms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from sparrow_vllm.draft.checkpoint import check_draft_for_target, load_draft_weights
from sparrow_vllm.draft.factory import new_draft
from sparrow_vllm.families import load_family
from sparrow_vllm.training.features import FeatureShards
from sparrow_vllm.training.settings import TrainSettings
from sparrow_vllm.training.target import load_hf_target
from sparrow_vllm.training.trainer import Trainer

QUICK = dict(batch_size=4, lr=3e-3, warmup=2, val_samples=2, val_every=1000, val_k=3, seed=0)


def _trainer(world, out: Path, **settings) -> Trainer:
    target = load_hf_target(world["target"])
    draft = new_draft(target.family, window=16)
    return Trainer(
        draft, target.model.get_input_embeddings(), target.model.get_output_embeddings(),
        FeatureShards(world["features"]), TrainSettings(**{**QUICK, **settings}), out,
    )


def test_loss_goes_down(tiny_world, tmp_path):
    log = _trainer(tiny_world, tmp_path, steps=40).fit()
    first = sum(m["loss"] for m in log[:5]) / 5
    last = sum(m["loss"] for m in log[-5:]) / 5
    assert last < 0.7 * first, (first, last)


def test_resume_continues_from_the_same_step(tiny_world, tmp_path):
    straight = _trainer(tiny_world, tmp_path / "a", steps=6, save_every=3)
    straight.fit()
    interrupted = _trainer(tiny_world, tmp_path / "b", steps=6, save_every=3)
    interrupted.fit(until=4)  # the state saved at step 3 survives the "crash"
    resumed = _trainer(tiny_world, tmp_path / "b", steps=6, save_every=3)
    resumed.resume()
    assert resumed.step == 3
    log = resumed.fit()
    assert [m["step"] for m in log] == [4, 5, 6]
    for name, value in straight.draft.state_dict().items():
        torch.testing.assert_close(resumed.draft.state_dict()[name], value, rtol=0, atol=0)


def test_validation_reports_acceptance_and_saves_a_loadable_draft(tiny_world, tmp_path):
    trainer = _trainer(tiny_world, tmp_path, steps=2)
    trainer.fit()
    entry = trainer.validate()
    # two steps already learn the tiny target's commonest answers: acceptance length 2.0
    # (an untrained draft: 1.0)
    assert entry["drafts"] > 0 and entry["acceptance_length"] > 1.5, entry
    assert len(entry["per_position_rate"]) == 3
    out = trainer.save_draft(["test"])
    config = json.loads((out / "config.json").read_text())
    assert config["provenance"]["command"] == ["test"]
    checkpoint = check_draft_for_target(out, load_family(tiny_world["target"]))
    load_draft_weights(checkpoint, torch.float32, "cpu")
    assert json.loads((out / "validation.json").read_text())[-1]["step"] == 2


def _cli(*args: str, nproc: int = 1, env: dict | None = None) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "sparrow_vllm.cli"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={nproc}", "-m", "sparrow_vllm.cli"]
    proc = subprocess.run(
        [*launcher, *args], capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def test_two_processes_train_with_ddp(tiny_world, tmp_path):
    proc = _cli(
        "train", "--target", str(tiny_world["target"]), "--features", str(tiny_world["features"]),
        "--out", str(tmp_path / "ddp"), "--steps", "4", "--batch-size", "4", "--val-samples", "2",
        "--val-every", "4", nproc=2,
    )
    assert "on 2 process(es)" in proc.stderr
    checkpoint = check_draft_for_target(tmp_path / "ddp", load_family(tiny_world["target"]))
    assert checkpoint.sparrow.window is None


def test_full_visual_draft_is_written_for_vllm_eagle(tiny_world, tmp_path):
    _cli(
        "train", "--target", str(tiny_world["target"]), "--features", str(tiny_world["features"]),
        "--out", str(tmp_path / "eagle"), "--steps", "2", "--batch-size", "2", "--val-samples", "2",
        "--visual-rows", "full", "--no-ivsb", "--no-fc-bias",
    )
    config = json.loads((tmp_path / "eagle" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "provenance" in config
    from sparrow_vllm.training.evaluate import evaluate_acceptance

    result = evaluate_acceptance(tiny_world["target"], tmp_path / "eagle", tiny_world["features"], k=3)
    assert (result["form"], result["mode"], result["sequences"]) == ("eagle", "full", 12)
    assert result["drafts"] > 0 and result["mean_visual_tokens"] == 32


def test_online_features_equal_offline(tiny_world):
    from sparrow_vllm.training.data import ConversationDataset
    from sparrow_vllm.training.features import FeatureExtractor, FeatureSpec

    target = load_hf_target(tiny_world["target"])
    extractor = FeatureExtractor(target, target.processor, FeatureSpec(feature_layer=None, bridge_layer=1))
    dataset = ConversationDataset(tiny_world["manifest"])
    sample = dataset.load(3)
    online = extractor.extract(sample, extractor.hf_greedy_answer(sample, 24))
    offline = FeatureShards(tiny_world["features"])[3]
    for key, value in offline.items():
        torch.testing.assert_close(online[key], value)
