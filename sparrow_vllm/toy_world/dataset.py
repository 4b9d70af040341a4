"""Toy-world datasets in the LLaVA-Video layout: a JSONL manifest plus one clip per row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np

from sparrow_vllm.errors import UsageError
from sparrow_vllm.toy_world.render import render
from sparrow_vllm.toy_world.scene import QUESTIONS, sample_scene
from sparrow_vllm.toy_world.target import CLIP_SECONDS

VideoFormat = Literal["npy", "mp4"]


def frames_for_visual_tokens(tokens: int, size: int = 112) -> int:
    """Frames at size x size whose Qwen2.5-VL video tokens come closest to `tokens`
    (one token per 2x2 patches of 14 px, two frames per temporal patch)."""
    per_pair = (size // 28) ** 2
    return max(2, 2 * round(tokens / per_pair))


def write_clip(path: Path, frames: np.ndarray, video_format: VideoFormat) -> Path:
    if video_format == "npy":
        path = path.with_suffix(".npy")
        np.save(path, frames)
        return path
    import cv2

    path = path.with_suffix(".mp4")
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), len(frames) / CLIP_SECONDS, (w, h))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_dataset(
    out_dir: str | Path, num: int, frames: list[int], seed: int = 0,
    questions: list[str] | None = None, video_format: VideoFormat = "npy",
) -> Path:
    """`num` rows of scenes from `seed`, row i rendered at frames[i % len(frames)], each
    with one question (cycling through `questions`, default all) and its reference
    answer. Returns the manifest path (train.jsonl)."""
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    questions = questions or list(QUESTIONS)
    unknown = set(questions) - set(QUESTIONS)
    if unknown:
        raise UsageError(f"unknown --questions {sorted(unknown)}; choose from {sorted(QUESTIONS)}")
    manifest = out / "train.jsonl"
    with manifest.open("w") as f:
        for i in range(num):
            scene = sample_scene(seed, i)
            question = questions[i % len(questions)]
            clip = write_clip(out / "videos" / f"{i:06d}", render(scene, frames[i % len(frames)]), video_format)
            row = {
                "id": f"toy-{seed}-{i}",
                "video": str(clip.relative_to(out)),
                "video_seconds": CLIP_SECONDS,
                "conversations": [
                    {"from": "human", "value": "<video>\n" + QUESTIONS[question]},
                    {"from": "gpt", "value": scene.answer(question)},
                ],
            }
            f.write(json.dumps(row) + "\n")
    return manifest
