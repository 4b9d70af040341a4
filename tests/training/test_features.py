"""Feature extraction: records match the target, shards resume, bad rows are skipped."""

from __future__ import annotations

import json
import logging
import shutil
import sys

import pytest
import torch

from sparrow_vllm.errors import UsageError
from sparrow_vllm.training.features import INDEX_FILE, FeatureExtractor, FeatureShards, FeatureSpec
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


class _Crash(Exception):
    pass


def _crash_after(monkeypatch, calls: int, method: str = "extract") -> list[int]:
    """Make FeatureExtractor.<method> raise after `calls` calls, as a killed run would stop."""
    made = [0]
    original = getattr(FeatureExtractor, method)

    def counted(self, *args, **kwargs):
        if made[0] == calls:
            raise _Crash
        made[0] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FeatureExtractor, method, counted)
    return made


def _extract(tiny_world, out, **kwargs):
    return extract_features(
        tiny_world["target"], tiny_world["manifest"], out, FeatureSpec(feature_layer=None, bridge_layer=1),
        regenerate_tokens=24, regenerate_with="hf", shard_size=5, **kwargs,
    )


def _assert_same_records(a: FeatureShards, b: FeatureShards) -> None:
    assert len(a) == len(b)
    for i in range(len(b)):
        assert a[i].keys() == b[i].keys()
        for key, value in b[i].items():
            torch.testing.assert_close(a[i][key], value)


def test_extraction_resumes_at_the_row_after_an_interruption(tiny_world, tmp_path, monkeypatch, caplog):
    out = tmp_path / "features"
    _crash_after(monkeypatch, 7)
    with pytest.raises(_Crash):
        _extract(tiny_world, out)
    # rows 0-4 are a finished shard, rows 5-6 are staged; nothing else exists yet
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.json", "shard-00000.safetensors"]
    assert len(list((out / "staging" / "shard-00001").glob("row-*.safetensors"))) == 2
    monkeypatch.undo()
    regenerated = _crash_after(monkeypatch, 99, "hf_greedy_answer")
    with caplog.at_level(logging.INFO, logger="sparrow_vllm"):
        _extract(tiny_world, out)
    assert "7 of 12 rows already done (1 of 3 shards finished); continuing from row 7" in caplog.text
    # shard 1's answers (rows 5-9) were regenerated and staged before the crash: only the
    # rows of shard 2 are regenerated now
    assert regenerated[0] == 2
    resumed, original = FeatureShards(out), FeatureShards(tiny_world["features"])
    assert resumed.index["done"] and not (out / "staging").exists()
    assert [s["rows"] for s in resumed.index["shards"]] == [[0, 5], [5, 10], [10, 12]]
    _assert_same_records(resumed, original)


def test_finished_extraction_reruns_as_nothing_to_do(tiny_world, tmp_path, caplog):
    out = tmp_path / "features"
    shutil.copytree(tiny_world["features"], out)
    with caplog.at_level(logging.INFO, logger="sparrow_vllm"):
        _extract(tiny_world, out)
    assert "extraction already finished (12 rows); nothing to do" in caplog.text
    assert json.loads((out / INDEX_FILE).read_text())["meta"]["feature_layer"] == "final"


def test_other_settings_do_not_resume_into_the_same_folder(tiny_world, tmp_path):
    out = tmp_path / "features"
    shutil.copytree(tiny_world["features"], out)
    with pytest.raises(UsageError, match="differs in: bridge_layer, regenerate_with.*give a new --out"):
        extract_features(tiny_world["target"], tiny_world["manifest"], out,
                         FeatureSpec(feature_layer=None, bridge_layer=None), regenerate_tokens=24, shard_size=5)


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


def test_one_worker_needs_no_ray_and_more_name_the_extra_to_install(tiny_world, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    _assert_same_records(FeatureShards(_extract(tiny_world, tmp_path / "one", workers=1)),
                         FeatureShards(tiny_world["features"]))
    with pytest.raises(UsageError, match=r"pip install 'sparrow-vllm\[scale\]' \(or run with --workers 1\)"):
        _extract(tiny_world, tmp_path / "features", workers=2)
