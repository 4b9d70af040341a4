"""Tiny offline targets (random weights) with tokenizer and processor files.

`qwen2` is a text-only Qwen2ForCausalLM; `qwen2_vl`, `qwen2_5_vl` and `qwen3_vl` are
Qwen-VL models with a 2-block vision tower and M-RoPE; `llava_onevision` is a Qwen2 decoder
with a SigLIP tower (anyres image tiles, pooled video frames). All load in vLLM and
transformers without any download. Words of the vocabulary are the two-letter words
` aa` .. ` zz`; special tokens follow each family (Qwen's, or LLaVA's `<image>`/`<video>`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from sparrow_vllm.toy_targets.text import ToySizes
from sparrow_vllm.toy_targets.tokenizer import (
    LLAVA_TOKENS,
    QWEN_VL_TOKENS,
    TEXT_TOKENS,
    ChatTokens,
    write_tokenizer,
)

if TYPE_CHECKING:
    import torch

Arch = Literal["qwen2", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision"]
ARCHES: tuple[str, ...] = get_args(Arch)
VLM_ARCHES: tuple[str, ...] = ARCHES[1:]

CHAT_TOKENS: dict[str, ChatTokens] = {
    "qwen2": TEXT_TOKENS,
    "qwen2_vl": QWEN_VL_TOKENS,
    "qwen2_5_vl": QWEN_VL_TOKENS,
    "qwen3_vl": QWEN_VL_TOKENS,
    "llava_onevision": LLAVA_TOKENS,
}


def _build_model(arch: str, out: Path, vocab: dict[str, int], sizes: ToySizes) -> torch.nn.Module:
    if arch == "qwen2":
        from sparrow_vllm.toy_targets.text import build_qwen2

        return build_qwen2(vocab, sizes)
    if arch == "llava_onevision":
        from sparrow_vllm.toy_targets.llava_onevision import build_llava_onevision

        return build_llava_onevision(out, vocab, sizes)
    from sparrow_vllm.toy_targets.qwen_vl import build_qwen_vl

    return build_qwen_vl(arch, out, vocab, sizes)


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
    import torch

    if arch not in CHAT_TOKENS:
        raise ValueError(f"unknown toy target arch {arch!r}; use one of {', '.join(ARCHES)}")
    sizes = ToySizes(
        hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_kv_heads,
        vision_depth=vision_depth, vision_hidden_size=vision_hidden_size,
        intermediate_multiple=intermediate_multiple, max_positions=max_positions,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(out, words, CHAT_TOKENS[arch])
    torch.manual_seed(seed)
    model = _build_model(arch, out, vocab, sizes)
    if init_std is not None:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, init_std)
    model.generation_config.eos_token_id = vocab["<|im_end|>"]
    model.save_pretrained(out)
    if arch == "llava_onevision":
        from sparrow_vllm.toy_targets.llava_onevision import write_llava_hf_weight_names

        write_llava_hf_weight_names(out)
    return out


__all__ = ["ARCHES", "VLM_ARCHES", "Arch", "build_toy_target"]
