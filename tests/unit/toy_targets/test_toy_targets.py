"""Toy targets of every VLM family load and run offline in transformers, with the family's
placeholder tokens. (vLLM, which needs an engine per target, is not started here.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparrow_vllm.toy_targets import ARCHES, VLM_ARCHES, build_toy_target

# (image, video) placeholder tokens each family's template writes and its processor expands
PLACEHOLDERS = {
    "qwen2_vl": ("<|image_pad|>", "<|video_pad|>"),
    "qwen2_5_vl": ("<|image_pad|>", "<|video_pad|>"),
    "qwen3_vl": ("<|image_pad|>", "<|video_pad|>"),
    "llava_onevision": ("<image>", "<video>"),
}
FRAMES, SIDE, FPS = 8, 112, 2.0


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    built = {}

    def get(arch):
        if arch not in built:
            built[arch] = build_toy_target(arch, tmp_path_factory.mktemp(arch))
        return built[arch]

    return get


def _media():
    from PIL import Image

    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, (FRAMES, SIDE, SIDE, 3), dtype=np.uint8)
    image = Image.fromarray(rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8))
    return video, image


def _inputs(processor, kind: str) -> dict:
    """The processor's tensors for a chat turn with one video or one image, passed the way
    sparrow_vllm/training/features.py passes them."""
    video, image = _media()
    messages = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": "ab cd ef"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    kwargs: dict = {"text": [text], "return_tensors": "pt"}
    if kind == "video":
        kwargs["videos"] = [video]
        kwargs["video_metadata"] = [{
            "total_num_frames": FRAMES, "fps": FPS, "duration": FRAMES / FPS, "frames_indices": list(range(FRAMES)),
        }]
        kwargs["do_sample_frames"] = False
    else:
        kwargs["images"] = [image]
    return dict(processor(**kwargs))


def test_arches():
    assert ARCHES == ("qwen2", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision")
    assert VLM_ARCHES == ARCHES[1:]
    with pytest.raises(ValueError, match="unknown toy target arch"):
        build_toy_target("llama", "/nonexistent")


def test_qwen_token_ids_are_unchanged(targets):
    """Committed models and tests depend on the Qwen tokenizer's ids."""
    from transformers import AutoTokenizer

    for arch in ("qwen2", "qwen2_5_vl"):
        tok = AutoTokenizer.from_pretrained(targets(arch))
        ids = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                                         "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])
        assert ids == list(range(7))
        assert tok(" aa ab zz", add_special_tokens=False).input_ids == [264, 265, 964]
        assert len(tok) == 7 + 256 + 26 + 676


@pytest.mark.parametrize("arch", VLM_ARCHES)
def test_config_token_ids_are_the_tokenizer_ids(targets, arch):
    from transformers import AutoConfig, AutoTokenizer

    path = targets(arch)
    config, tok = AutoConfig.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    image, video = PLACEHOLDERS[arch]
    assert config.image_token_id == tok.convert_tokens_to_ids(image)
    assert config.video_token_id == tok.convert_tokens_to_ids(video)
    if arch.startswith("qwen"):
        assert config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
        assert config.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>")
    text = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "aa"}]}],
        add_generation_prompt=True, tokenize=False,
    )
    if arch.startswith("qwen"):
        image = f"<|vision_start|>{image}<|vision_end|>"
        video = f"<|vision_start|>{video}<|vision_end|>"
    assert text == f"<|im_start|> user {image} {video} aa  <|im_end|> <|im_start|> assistant "
    assert config.text_config.vocab_size == len(tok)


@pytest.mark.parametrize("arch", VLM_ARCHES)
def test_hf_loads_processes_and_generates(targets, arch):
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    path = targets(arch)
    config = AutoConfig.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    assert config.text_config.hidden_size == 128 and config.text_config.num_hidden_layers == 2
    outputs = {}
    for kind, token_id in (("video", config.video_token_id), ("image", config.image_token_id)):
        inputs = _inputs(processor, kind)
        ids = inputs["input_ids"][0].tolist()
        n = ids.count(token_id)
        # a handful of placeholder tokens: 33 (LLaVA-OV video) .. 88 (LLaVA-OV image)
        assert 8 <= n <= 300, (kind, n)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        outputs[kind] = out[0, len(ids):].tolist()
        assert len(outputs[kind]) == 8
    # an untrained target's greedy output still depends on its input
    assert outputs["video"] != outputs["image"]
    assert len(set(outputs["video"] + outputs["image"])) > 2


def test_qwen3_vl_video_prompt_has_timestamps(targets):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(targets("qwen3_vl"))
    inputs = _inputs(processor, "video")
    text = processor.tokenizer.decode(inputs["input_ids"][0])
    # one timestamp per temporal patch of 2 frames: the mean time of its two frames
    stamps = [f"<{(2 * i + 0.5) / FPS:.1f} seconds>" for i in range(FRAMES // 2)]
    for stamp in stamps:
        assert stamp in text
    assert f"<|vision_end|>{stamps[1]}<|vision_start|>" in text
    assert text.count("<|vision_start|>") == 1 + FRAMES // 2
    # timestamps are ordinary tokens: digits, '<', '.', ' seconds', '>' spelled in bytes and words
    tok = processor.tokenizer
    ids = tok(stamps[1], add_special_tokens=False).input_ids
    assert tok.decode(ids) == stamps[1] and not set(ids) & set(tok.all_special_ids)
