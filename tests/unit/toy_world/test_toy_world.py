"""The toy video world: deterministic scenes whose answers need the frames."""

from __future__ import annotations

import numpy as np
import pytest

from sparrow_vllm.toy_world.dataset import frames_for_visual_tokens
from sparrow_vllm.toy_world.render import render
from sparrow_vllm.toy_world.scene import COLOURS, QUESTIONS, WORDS, sample_scene


def test_scenes_are_a_function_of_seed_and_index():
    assert sample_scene(3, 7) == sample_scene(3, 7)
    assert len({sample_scene(0, i) for i in range(50)}) == 50
    np.testing.assert_array_equal(render(sample_scene(0, 1), 6), render(sample_scene(0, 1), 6))


def test_answers_use_only_vocabulary_words():
    for i in range(100):
        scene = sample_scene(0, i)
        for question in QUESTIONS:
            assert set(scene.answer(question).split()) <= set(WORDS)
    with pytest.raises(ValueError, match="use one of"):
        sample_scene(0, 0).answer("why")


def _visible(frame: np.ndarray, colour: str) -> bool:
    return bool((frame.reshape(-1, 3) == COLOURS[colour]).all(axis=1).any())


def test_frames_show_the_events_in_order():
    for i in range(10):
        scene = sample_scene(0, i)
        frames = render(scene, 12)
        assert frames.shape == (12, 112, 112, 3) and frames.dtype == np.uint8
        per_event = 12 // len(scene.shapes)
        for k, shape in enumerate(scene.shapes):  # shape k is on screen in its event only
            seen = [t for t in range(12) if _visible(frames[t], shape.colour)]
            assert seen == list(range(k * per_event, (k + 1) * per_event)), (i, k, seen)


def test_shapes_move_in_their_direction():
    for i in range(20):
        scene = sample_scene(0, i)
        if len(scene.shapes) != 1:
            continue
        shape = scene.shapes[0]
        frames = render(scene, 2)
        centres = []
        for f in frames:
            yy, xx = np.nonzero((f == COLOURS[shape.colour]).all(-1))
            centres.append((xx.mean(), yy.mean()))
        dx, dy = centres[1][0] - centres[0][0], centres[1][1] - centres[0][1]
        expected = {"left": dx < -10, "right": dx > 10, "up": dy < -10, "down": dy > 10}
        assert expected[shape.direction], (shape, dx, dy)


@pytest.mark.parametrize("tokens,frames", [(512, 64), (1536, 192), (25_000, 3124)])
def test_frames_for_visual_tokens(tokens, frames):
    assert frames_for_visual_tokens(tokens) == frames
    assert abs(frames // 2 * 16 - tokens) <= 16


def test_every_clip_spans_the_same_seconds(tmp_path):
    """Denser clips of one scene keep M-RoPE time positions in one range: the frame rate
    grows with the frame count, and the manifest says how long each clip is."""
    import json

    from sparrow_vllm.toy_world.dataset import write_dataset
    from sparrow_vllm.toy_world.target import CLIP_SECONDS, video_metadata

    for frames in (8, 64, 3124):
        meta = video_metadata(frames)
        assert meta["duration"] == CLIP_SECONDS and meta["fps"] * CLIP_SECONDS == frames
    manifest = write_dataset(tmp_path, num=2, frames=[8, 16], seed=5)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [r["video_seconds"] for r in rows] == [CLIP_SECONDS, CLIP_SECONDS]


def test_long_clips_come_in_smaller_batches():
    from pathlib import Path

    from transformers import AutoProcessor

    from sparrow_vllm.toy_world.target import TargetTrainSettings, _batch

    target = Path(__file__).resolve().parents[3] / "models" / "toy-world" / "target"
    processor = AutoProcessor.from_pretrained(str(target))
    batch = _batch(processor, 0, TargetTrainSettings(frames=(64,), batch_size=32, max_batch_tokens=4096))
    assert batch["input_ids"].shape[0] == 4096 // (64 * 8)
    assert batch["video_grid_thw"].tolist() == [[32, 8, 8]] * 8
    answer_tokens = (batch["labels"] != -100).sum(1)
    assert (answer_tokens > 1).all()  # the loss is on every row's answer
