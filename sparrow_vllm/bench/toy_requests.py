"""Toy-world video questions as vLLM requests: offline prompts (frames + metadata) and
OpenAI chat messages (an mp4 data URL), the same clip either way."""

from __future__ import annotations

import base64
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparrow_vllm.toy_world.render import render
from sparrow_vllm.toy_world.scene import QUESTIONS, sample_scene
from sparrow_vllm.toy_world.target import VISUAL_TOKENS_PER_FRAME, prompt_messages, video_metadata


@dataclass(frozen=True)
class ToyQuestion:
    """Question `question` about scene `index` of scene seed `seed`, rendered at `frames`."""

    seed: int
    index: int
    frames: int
    question: str

    @property
    def text(self) -> str:
        return QUESTIONS[self.question]

    @property
    def visual_tokens(self) -> int:
        """The clip's length in Qwen2.5-VL video tokens."""
        return self.frames * VISUAL_TOKENS_PER_FRAME

    @property
    def truth(self) -> str:
        return sample_scene(self.seed, self.index).answer(self.question)

    def clip(self):  # [frames, 112, 112, 3] uint8
        return render(sample_scene(self.seed, self.index), self.frames)

    def offline_prompt(self, tokenizer: Any) -> dict[str, Any]:
        """An `LLM.generate` prompt: chat text plus the clip with its metadata."""
        text = tokenizer.apply_chat_template(prompt_messages(self.question), add_generation_prompt=True,
                                             tokenize=False)
        meta = {**video_metadata(self.frames), "do_sample_frames": False}
        return {"prompt": text, "multi_modal_data": {"video": (self.clip(), meta)}}

    def chat_messages(self) -> list[dict[str, Any]]:
        """OpenAI chat messages: the clip as an mp4 data URL, then the question."""
        return [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": mp4_data_url(self.clip())}},
            {"type": "text", "text": self.text},
        ]}]


def mp4_data_url(frames) -> str:
    """frames [T, H, W, 3] uint8 RGB as a base64 mp4 data URL (the toy world's frame rate,
    so vLLM reads the clip's duration from the file)."""
    from sparrow_vllm.toy_world.dataset import write_clip

    with tempfile.TemporaryDirectory() as tmp:
        path = write_clip(Path(tmp) / "clip", frames, "mp4")
        return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()
