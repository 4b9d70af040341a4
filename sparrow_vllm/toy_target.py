"""Tiny offline targets (random weights) with tokenizer and processor files.

`qwen2` is a text-only Qwen2ForCausalLM; `qwen2_5_vl` is a Qwen2.5-VL with a 2-layer
vision tower. Both load in vLLM and transformers without any download. Words of the
vocabulary are the two-letter words ` aa` .. ` zz`; special tokens follow Qwen.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Renders `<|im_start|> role content <|im_end|>`; images and videos become Qwen-VL
# placeholders, which vLLM's processor expands to one token per visual patch group.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|> {{ message['role'] }} "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }} "
    "{% elif part['type'] in ['image', 'image_url'] %}"
    "<|vision_start|><|image_pad|><|vision_end|> "
    "{% elif part['type'] in ['video', 'video_url'] %}"
    "<|vision_start|><|video_pad|><|vision_end|> "
    "{% endif %}{% endfor %}{% endif %} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)

Arch = Literal["qwen2", "qwen2_5_vl"]


def _byte_level_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def two_letter_words() -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return [a + b for a in letters for b in letters]


def write_tokenizer(out: Path, words: list[str] | None = None) -> dict[str, int]:
    """A byte-level BPE tokenizer (the kind Qwen2Tokenizer expects) in which each word of
    `words` (default: the 676 two-letter words ` aa` .. ` zz`) after a space is one token;
    other text falls back to bytes. Each word is built by a chain of prefix merges."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    space = "\u0120"  # how byte-level BPE writes a leading space
    symbols = SPECIAL_TOKENS + _byte_level_alphabet()
    known = set(symbols)
    merges = []
    for word in words if words is not None else two_letter_words():
        prefix = space
        for char in word:
            merged = prefix + char
            if merged not in known:
                known.add(merged)
                symbols.append(merged)
                merges.append((prefix, char))
            prefix = merged
    vocab = {w: i for i, w in enumerate(symbols)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return vocab


def _text_kwargs(
    vocab: dict[str, int], hidden: int, layers: int, heads: int, kv_heads: int, intermediate_multiple: int = 2,
    max_positions: int = 4096,
) -> dict:
    return dict(
        vocab_size=len(vocab),  # every id decodes
        hidden_size=hidden,
        intermediate_size=intermediate_multiple * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=vocab["<|endoftext|>"],
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )


def _write_processor_files(out: Path) -> None:
    pixels = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
    common = {
        "do_resize": True,
        "do_rescale": True,
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "size": {"shortest_edge": pixels["min_pixels"], "longest_edge": pixels["max_pixels"]},
        **pixels,
    }
    (out / "preprocessor_config.json").write_text(
        json.dumps({"image_processor_type": "Qwen2VLImageProcessor", **common}, indent=2)
    )
    (out / "video_preprocessor_config.json").write_text(
        json.dumps(
            {"video_processor_type": "Qwen2VLVideoProcessor", "do_sample_frames": False, **common},
            indent=2,
        )
    )
    (out / "processor_config.json").write_text(
        json.dumps({"processor_class": "Qwen2_5_VLProcessor"}, indent=2)
    )


def build_toy_target(
    arch: Arch,
    out_dir: str | Path,
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    seed: int = 0,
    words: list[str] | None = None,
    vision_depth: int = 2,
    vision_hidden_size: int = 64,
    init_std: float | None = 0.05,
    intermediate_multiple: int = 2,
    max_positions: int = 4096,
) -> Path:
    """Write a tiny randomly initialised target with tokenizer (and processor) files.

    words: the tokenizer's one-token words (default ` aa` .. ` zz`). init_std: std of the
    normal init of every matrix (larger than HF's default so an untrained target's greedy
    output depends on its input); None keeps HF's init, for a target that will be trained.
    """
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(out, words)
    text = _text_kwargs(vocab, hidden_size, num_layers, num_heads, num_kv_heads, intermediate_multiple,
                        max_positions)
    torch.manual_seed(seed)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**text, rope_theta=10000.0))
    elif arch == "qwen2_5_vl":
        head_dim = hidden_size // num_heads
        # Qwen2.5-VL's split of the rotary pairs over (time, height, width): 1/4, 3/8, 3/8
        time = head_dim // 8
        rope = {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [time, (head_dim // 2 - time) // 2, (head_dim // 2 - time) // 2],
        }
        config = Qwen2_5_VLConfig(
            text_config={**text, "rope_parameters": rope},
            vision_config={
                "depth": vision_depth,
                "hidden_size": vision_hidden_size,
                "intermediate_size": 2 * vision_hidden_size,
                "num_heads": 4,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "window_size": 56,
                "fullatt_block_indexes": list(range(1, vision_depth, 2)),
                "out_hidden_size": hidden_size,
            },
            image_token_id=vocab["<|image_pad|>"],
            video_token_id=vocab["<|video_pad|>"],
            vision_start_token_id=vocab["<|vision_start|>"],
            vision_end_token_id=vocab["<|vision_end|>"],
            tie_word_embeddings=False,
        )
        model = Qwen2_5_VLForConditionalGeneration(config)
        _write_processor_files(out)
    else:
        raise ValueError(f"unknown toy target arch {arch!r}; use 'qwen2' or 'qwen2_5_vl'")
    if init_std is not None:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, init_std)
    model.generation_config.eos_token_id = vocab["<|im_end|>"]
    model.save_pretrained(out)
    return out
