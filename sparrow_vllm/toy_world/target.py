"""The toy world's target: a small Qwen2.5-VL trained with HF transformers on CPU.

8 decoder layers (hidden 256, GQA 4:2) and a 4-block vision tower, ~6M parameters, so one
draft layer costs a small fraction of a target step, as with a 7B target. Training is
seeded and reproducible: batch s holds scenes s*B .. s*B+B-1 of the training seed, each
with a random question, rendered at 6 or 8 frames; the loss is on answer tokens only.
`evaluate` measures exact-match accuracy with the real video and with a blank one.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparrow_vllm.toy_targets import build_toy_target
from sparrow_vllm.toy_world.render import render
from sparrow_vllm.toy_world.scene import QUESTIONS, WORDS, sample_scene
from sparrow_vllm.training.trainer import warmup_cosine

logger = logging.getLogger(__name__)

# Clip lengths the target trains on: from 48 to 8k visual tokens, so that its answers hold
# on long clips (up to 25k tokens in the benchmarks) and not only on the short ones.
FRAME_CHOICES = (6, 8, 16, 32, 64, 128, 256, 512, 1024)
# Every toy-world clip shows a scene of this many seconds: the frame count sets the frame
# rate, so M-RoPE time positions span the same range at any length, as when a real video is
# sampled more densely.
CLIP_SECONDS = 4.0
VISUAL_TOKENS_PER_FRAME = 8  # 16 tokens per temporal patch of 2 frames at 112 x 112


@dataclass(frozen=True)
class TargetTrainSettings:
    steps: int = 1800
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 50
    seed: int = 0
    frames: tuple[int, ...] = FRAME_CHOICES
    # long clips come in smaller batches: at most this many visual tokens per batch
    max_batch_tokens: int = 4096
    # batches are numbered from here, so a continued run sees new scenes
    first_step: int = 0


def build_target(out_dir: str | Path, seed: int = 0) -> Path:
    """An untrained toy-world target (tokenizer, processor files, HF-initialised weights)."""
    return build_toy_target(
        "qwen2_5_vl", out_dir, words=WORDS, num_layers=8, hidden_size=128, num_heads=4,
        num_kv_heads=2, vision_depth=2, vision_hidden_size=128, init_std=None, seed=seed,
        intermediate_multiple=4, max_positions=32768,  # room for 25k-token videos
    )


def video_metadata(num_frames: int) -> dict[str, Any]:
    """Metadata of a toy-world clip as vLLM and the HF processor read it (CLIP_SECONDS long,
    no frame sampling), so M-RoPE time positions agree between training and serving."""
    return {
        "total_num_frames": num_frames,
        "fps": num_frames / CLIP_SECONDS,
        "duration": CLIP_SECONDS,
        "frames_indices": list(range(num_frames)),
        "video_backend": "numpy",
    }


def process(processor: Any, texts: list[str], clips: list[np.ndarray], **kwargs: Any) -> dict[str, Any]:
    """The HF processor's tensors for toy-world texts and clips (one clip per text)."""
    return dict(
        processor(
            text=texts, videos=clips, video_metadata=[video_metadata(len(c)) for c in clips],
            do_sample_frames=False, return_tensors="pt", **kwargs,
        )
    )


def prompt_messages(question: str) -> list[dict[str, Any]]:
    """Chat messages for a toy-world question about one video."""
    return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTIONS[question]}]}]


def _batch(processor: Any, step: int, settings: TargetTrainSettings) -> dict[str, torch.Tensor]:
    rng = random.Random(settings.seed * 7919 + step)
    frames = rng.choice(settings.frames)
    size = min(settings.batch_size, max(1, settings.max_batch_tokens // (frames * VISUAL_TOKENS_PER_FRAME)))
    texts, answers, videos = [], [], []
    for j in range(size):
        scene = sample_scene(settings.seed, step * settings.batch_size + j)
        question = "describe" if rng.random() < 0.5 else rng.choice(["count", "number", "first"])
        prompt = processor.apply_chat_template(prompt_messages(question), add_generation_prompt=True, tokenize=False)
        answer = " " + scene.answer(question) + " <|im_end|>"
        texts.append(prompt + answer)
        answers.append(len(processor.tokenizer(answer, add_special_tokens=False).input_ids))
        videos.append(render(scene, frames))
    batch = process(processor, texts, videos, padding=True)
    labels = torch.full_like(batch["input_ids"], -100)
    lengths = batch["attention_mask"].sum(1)
    for row, (n, a) in enumerate(zip(lengths.tolist(), answers, strict=True)):
        labels[row, n - a : n] = batch["input_ids"][row, n - a : n]
    batch["labels"] = labels
    return batch


def train_target(target_dir: str | Path, out_dir: str | Path, settings: TargetTrainSettings) -> Path:
    """Train the target in `target_dir` (untrained, or trained before: continue with
    first_step past the earlier run's steps) on toy-world questions; write it to `out_dir`."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from sparrow_vllm.families import load_family

    load_family(str(target_dir)).use_serving_positions()
    torch.manual_seed(settings.seed)
    processor = AutoProcessor.from_pretrained(str(target_dir))
    model = AutoModelForImageTextToText.from_pretrained(str(target_dir), dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, settings.steps, settings.warmup, 0.1))
    start = time.time()
    for step in range(settings.steps):
        loss = model(**_batch(processor, settings.first_step + step, settings)).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 25 == 0 or step == settings.steps - 1:
            logger.info("target step %d loss %.4f (%.0f s)", step, loss.item(), time.time() - start)
    model.eval()
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@torch.no_grad()
def evaluate(
    target_dir: str | Path, num_scenes: int = 64, frames: int = 8, seed: int = 1, video: str = "real"
) -> dict[str, float]:
    """Exact-match accuracy per question on held-out scenes, with the real video, a blank
    (black) one, or the video of another scene ("shuffled")."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from sparrow_vllm.families import load_family

    load_family(str(target_dir)).use_serving_positions()
    processor = AutoProcessor.from_pretrained(str(target_dir))
    model = AutoModelForImageTextToText.from_pretrained(str(target_dir), dtype=torch.float32).eval()
    scenes = [sample_scene(seed, i) for i in range(num_scenes)]
    clips = [render(s, frames) for s in scenes]
    if video == "blank":
        clips = [np.zeros_like(c) for c in clips]
    elif video == "shuffled":
        clips = clips[1:] + clips[:1]
    elif video != "real":
        raise ValueError(f"video={video!r}; use 'real', 'blank' or 'shuffled'")
    accuracy = {}
    for question in QUESTIONS:
        prompt = processor.apply_chat_template(prompt_messages(question), add_generation_prompt=True, tokenize=False)
        correct = 0
        for i in range(0, num_scenes, 16):
            batch = process(processor, [prompt] * len(clips[i : i + 16]), clips[i : i + 16])
            out = model.generate(**batch, max_new_tokens=64, do_sample=False)
            texts = processor.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            correct += sum(t.strip() == s.answer(question) for t, s in zip(texts, scenes[i : i + 16], strict=True))
        accuracy[question] = correct / num_scenes
    return accuracy
