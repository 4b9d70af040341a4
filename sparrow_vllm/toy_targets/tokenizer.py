"""The toy targets' tokenizer: byte-level BPE with one token per two-letter word.

Every family shares the vocabulary scheme (special tokens first, then the 256 byte symbols,
then the words ` aa` .. ` zz`, one token each) and the chat framing
`<|im_start|> role content <|im_end|>`; a family picks its special tokens and the
placeholders its chat template writes for an image and a video.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
LLAVA_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")


@dataclass(frozen=True)
class ChatTokens:
    """A family's special tokens (the first is the pad/bos token) and what its chat template
    writes for an image and for a video (the placeholders its processor expands)."""

    special: tuple[str, ...]
    image: str | None = None
    video: str | None = None


TEXT_TOKENS = ChatTokens(QWEN_SPECIAL_TOKENS)
# Qwen2-VL, Qwen2.5-VL and Qwen3-VL: the processor expands the pad token of
# `<|vision_start|><|image_pad|><|vision_end|>` (Qwen3-VL puts `<t seconds>` before each
# temporal patch of a video, each in its own vision_start/end pair).
QWEN_VL_TOKENS = ChatTokens(
    QWEN_SPECIAL_TOKENS,
    image="<|vision_start|><|image_pad|><|vision_end|>",
    video="<|vision_start|><|video_pad|><|vision_end|>",
)
LLAVA_TOKENS = ChatTokens(LLAVA_SPECIAL_TOKENS, image="<image>", video="<video>")


def chat_template(tokens: ChatTokens) -> str:
    """Renders `<|im_start|> role content <|im_end|>`; images and videos become the family's
    placeholders, which the processors (HF's and vLLM's) expand to one token per visual
    patch group."""
    # Text-only targets keep the Qwen-VL placeholders: their template is the historical one.
    image = tokens.image or QWEN_VL_TOKENS.image
    video = tokens.video or QWEN_VL_TOKENS.video
    return (
        "{% for message in messages %}<|im_start|> {{ message['role'] }} "
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'text' %}{{ part['text'] }} "
        "{% elif part['type'] in ['image', 'image_url'] %}"
        f"{image} "
        "{% elif part['type'] in ['video', 'video_url'] %}"
        f"{video} "
        "{% endif %}{% endfor %}{% endif %} <|im_end|> {% endfor %}"
        "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
    )


def _byte_level_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def two_letter_words() -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return [a + b for a in letters for b in letters]


def write_tokenizer(out: Path, words: list[str] | None = None, tokens: ChatTokens = TEXT_TOKENS) -> dict[str, int]:
    """A byte-level BPE tokenizer (the kind Qwen2Tokenizer expects) in which each word of
    `words` (default: the 676 two-letter words ` aa` .. ` zz`) after a space is one token;
    other text (digits, punctuation, Qwen3-VL's `<1.5 seconds>`) falls back to bytes. Each
    word is built by a chain of prefix merges."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = list(tokens.special)
    space = "\u0120"  # how byte-level BPE writes a leading space
    symbols = special + _byte_level_alphabet()
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
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=special[1:],
    )
    fast.chat_template = chat_template(tokens)
    fast.save_pretrained(out)
    return vocab
