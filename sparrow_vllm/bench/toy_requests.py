"""Toy-world questions as vLLM requests: offline prompts (frames + metadata, or one image)
and OpenAI chat messages (an mp4 or png data URL), the same pixels either way.

A question is about a video (`kind="video"`, `frames` frames) or about one image
(`kind="image"`: the scene's first frame, `frames` is 1). The toy-world target was trained
on videos only; an image question is still a well-defined request whose answer the target
alone decides, which is all speculative decoding needs."""

from __future__ import annotations

import base64
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparrow_vllm.toy_world.render import render
from sparrow_vllm.toy_world.scene import QUESTIONS, sample_scene
from sparrow_vllm.toy_world.target import VISUAL_TOKENS_PER_FRAME, prompt_messages, video_metadata

# one 112 x 112 frame as an image: 8 x 8 patches of 14 pixels, merged 2 x 2
IMAGE_VISUAL_TOKENS = 16
KINDS = ("video", "image")


@dataclass(frozen=True)
class ToyQuestion:
    """Question `question` about scene `index` of scene seed `seed`, rendered at `frames`
    (a video), or about the scene's first frame (`kind="image"`, `frames` 1)."""

    seed: int
    index: int
    frames: int
    question: str
    kind: str = "video"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r}: use one of {', '.join(KINDS)}")
        if self.kind == "image" and self.frames != 1:
            raise ValueError(f"an image question has frames=1, got {self.frames}")

    @property
    def text(self) -> str:
        return QUESTIONS[self.question]

    @property
    def visual_tokens(self) -> int:
        """The clip's length in Qwen2.5-VL video tokens (an image's in image tokens)."""
        return IMAGE_VISUAL_TOKENS if self.kind == "image" else self.frames * VISUAL_TOKENS_PER_FRAME

    @property
    def truth(self) -> str:
        return sample_scene(self.seed, self.index).answer(self.question)

    def clip(self):  # [frames, 112, 112, 3] uint8 (an image: [1, 112, 112, 3])
        if self.kind == "image":
            return render(sample_scene(self.seed, self.index), 2)[:1]
        return render(sample_scene(self.seed, self.index), self.frames)

    def messages(self) -> list[dict[str, Any]]:
        """Chat messages with a placeholder for the video or image, for the chat template."""
        messages = prompt_messages(self.question)
        if self.kind == "image":
            messages[0]["content"][0] = {"type": "image"}
        return messages

    def offline_prompt(self, tokenizer: Any) -> dict[str, Any]:
        """An `LLM.generate` prompt: chat text plus the clip with its metadata (or the image)."""
        text = tokenizer.apply_chat_template(self.messages(), add_generation_prompt=True, tokenize=False)
        if self.kind == "image":
            from PIL import Image

            return {"prompt": text, "multi_modal_data": {"image": Image.fromarray(self.clip()[0])}}
        meta = {**video_metadata(self.frames), "do_sample_frames": False}
        return {"prompt": text, "multi_modal_data": {"video": (self.clip(), meta)}}

    def chat_messages(self) -> list[dict[str, Any]]:
        """OpenAI chat messages: the clip as an mp4 data URL (an image as png), then the question."""
        if self.kind == "image":
            media = {"type": "image_url", "image_url": {"url": png_data_url(self.clip()[0])}}
        else:
            media = {"type": "video_url", "video_url": {"url": mp4_data_url(self.clip())}}
        return [{"role": "user", "content": [media, {"type": "text", "text": self.text}]}]


def mp4_data_url(frames) -> str:
    """frames [T, H, W, 3] uint8 RGB as a base64 mp4 data URL (the toy world's frame rate,
    so vLLM reads the clip's duration from the file)."""
    from sparrow_vllm.toy_world.dataset import write_clip

    with tempfile.TemporaryDirectory() as tmp:
        path = write_clip(Path(tmp) / "clip", frames, "mp4")
        return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()


def png_data_url(image) -> str:
    """image [H, W, 3] uint8 RGB as a base64 png data URL."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
