"""Feature extraction: records match the target, shards resume, bad rows are skipped."""

from __future__ import annotations

import json
import shutil

import torch

from sparrow_vllm.training.features import INDEX_FILE, FeatureShards, FeatureSpec
from sparrow_vllm.training.pipeline import extract_features
from sparrow_vllm.training.target import load_hf_target


def test_records_hold_the_targets_own_answers(tiny_world):
    shards = FeatureShards(tiny_world["features"])
    assert len(shards) == 12
    target = load_hf_target(tiny_world["target"])
    video_id = target.config.video_token_id
    for i in range(len(shards)):
        r = shards[i]
        n, start = len(r["input_ids"]), int(r["loss_start"])
        assert r["features"].shape == (n, target.config.text_config.hidden_size)
        assert torch.equal(r["visual_mask"], r["input_ids"] == video_id)
        assert r["bridge"].shape[0] == int(r["visual_mask"].sum()) == 32  # 4 frames of 112 px
        # regenerated answers are the target's greedy tokens, so target_next agrees
        assert torch.equal(r["target_next"][start - 1 : n - 1], r["input_ids"][start:])
        # M-RoPE row 0: text after the video continues from the video's last time index
        assert bool((r["positions"][1:] >= r["positions"][:-1]).all())


def test_extraction_resumes_after_an_interruption(tiny_world, tmp_path):
    out = tmp_path / "features"
    shutil.copytree(tiny_world["features"], out)
    index = json.loads((out / INDEX_FILE).read_text())
    # as if the run died after writing the first shard
    for shard in index["shards"][1:]:
        (out / shard["file"]).unlink()
    index.update(shards=index["shards"][:1], next_row=5, done=False)
    (out / INDEX_FILE).write_text(json.dumps(index))
    extract_features(
        tiny_world["target"], tiny_world["manifest"], out, FeatureSpec(feature_layer=None, bridge_layer=1),
        regenerate_tokens=24, shard_size=5,
    )
    resumed, original = FeatureShards(out), FeatureShards(tiny_world["features"])
    assert resumed.index["done"] and len(resumed) == len(original)
    for i in range(len(original)):
        for key, value in original[i].items():
            torch.testing.assert_close(resumed[i][key], value)


def test_bad_rows_are_counted_and_skipped(tiny_world, tmp_path):
    lines = tiny_world["manifest"].read_text().splitlines()[:3]
    broken = json.loads(lines[1])
    broken["video"] = "videos/missing.npy"
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join([lines[0], json.dumps(broken), "{not json", lines[2]]) + "\n")
    out = extract_features(
        tiny_world["target"], manifest, tmp_path / "f", FeatureSpec(feature_layer=None, bridge_layer=None),
        media_root=tiny_world["manifest"].parent,
    )
    shards = FeatureShards(out)
    assert len(shards) == 2
    assert shards.index["skips"] == {"missing_file": 1, "bad_record": 1}
    assert "bridge" not in shards[0]
