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
