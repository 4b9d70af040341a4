"""The prompts `sparrow-vllm check` serves: one of each kind the target's family takes,
rendered by the target's own chat template, with synthetic media."""

from __future__ import annotations

from typing import Any

import numpy as np

from sparrow_vllm.families import TargetFamily

TEXT = "Describe what you see, then say what happens next."
VIDEO_FRAMES, MEDIA_SIZE, VIDEO_FPS = 8, 112, 2.0


def prompt_kinds(family: TargetFamily) -> list[str]:
    """text always; image, video and video+image as the family takes them."""
    kinds = ["text"]
    kinds += [m for m in ("image", "video") if m in family.modalities]
    if {"image", "video"} <= set(family.modalities):
        kinds.append("video+image")
    return kinds


def synthetic_video(seed: int, frames: int = VIDEO_FRAMES, size: int = MEDIA_SIZE) -> tuple[np.ndarray, dict]:
    """[frames, size, size, 3] uint8 frames and the metadata vLLM's video loader gives."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8)
    meta = {
        "total_num_frames": frames, "fps": VIDEO_FPS, "duration": frames / VIDEO_FPS,
        "video_backend": "numpy", "frames_indices": list(range(frames)), "do_sample_frames": False,
    }
    return data, meta


def synthetic_image(seed: int, size: int = MEDIA_SIZE) -> Any:
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def build_prompt(kind: str, tokenizer: Any, seed: int = 0) -> dict[str, Any]:
    """A vLLM prompt dict (prompt text and multi_modal_data) of one kind."""
    media = kind.split("+") if kind != "text" else []
    content: list[dict[str, Any]] = [{"type": m} for m in media] + [{"type": "text", "text": TEXT}]
    messages = [{"role": "user", "content": content}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    data: dict[str, Any] = {}
    if "video" in media:
        data["video"] = synthetic_video(seed)
    if "image" in media:
        data["image"] = synthetic_image(seed + 1)
    return {"prompt": text, "multi_modal_data": data} if data else {"prompt": text}
