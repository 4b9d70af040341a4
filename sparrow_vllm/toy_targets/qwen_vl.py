"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL toy targets: a 2-block vision tower and M-RoPE.

Qwen2-VL and Qwen2.5-VL read 14-pixel patches (images of 56*56 .. 112*112 pixels); Qwen3-VL
reads 16-pixel ones (64*64 .. 128*128 per image or frame), adds deepstack features of an
early vision block to the first decoder layer(s), interleaves the M-RoPE sections, and its
processor writes `<t seconds>` before each temporal patch of a video.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sparrow_vllm.toy_targets.text import ToySizes, text_kwargs

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
PROCESSOR_CLASS = {
    "qwen2_vl": "Qwen2VLProcessor",
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "qwen3_vl": "Qwen3VLProcessor",
}
# Qwen3-VL's video budget counts all frames: 16 frames of 128*128 before frames shrink
QWEN3_VIDEO_PIXELS = {"shortest_edge": 2 * 64 * 64, "longest_edge": 16 * 128 * 128}


def _mrope(sizes: ToySizes, interleaved: bool) -> dict[str, Any]:
    half = sizes.head_dim // 2
    if interleaved:
        # Qwen3-VL's [24, 20, 20] of 64 rotary pairs, scaled; the sections interleave
        height = width = (half * 5) // 16
        section = [half - height - width, height, width]
    else:
        # Qwen2(.5)-VL's split of the rotary pairs over (time, height, width): 1/4, 3/8, 3/8
        time = sizes.head_dim // 8
        section = [time, (half - time) // 2, (half - time) // 2]
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section}
    if interleaved:
        rope["mrope_interleaved"] = True
    return rope


def _token_ids(vocab: dict[str, int]) -> dict[str, int]:
    return dict(
        image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
    )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2))


def write_processor_files(arch: str, out: Path) -> None:
    if arch == "qwen3_vl":
        common: dict[str, Any] = {
            "do_resize": True,
            "do_rescale": True,
            "do_normalize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
            "patch_size": 16,
            "temporal_patch_size": 2,
            "merge_size": 2,
        }
        image = {"size": {"shortest_edge": 64 * 64, "longest_edge": 128 * 128}, **common}
        video = {
            "size": QWEN3_VIDEO_PIXELS, "do_sample_frames": False, "fps": 2, "min_frames": 4,
            "max_frames": 64, "cap_pixels_per_frame": True, **common,
        }
        video_type = "Qwen3VLVideoProcessor"
    else:
        pixels = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
        image = {
            "do_resize": True,
            "do_rescale": True,
            "do_normalize": True,
            "image_mean": CLIP_MEAN,
            "image_std": CLIP_STD,
            "patch_size": 14,
            "temporal_patch_size": 2,
            "merge_size": 2,
            "size": {"shortest_edge": pixels["min_pixels"], "longest_edge": pixels["max_pixels"]},
            **pixels,
        }
        video = {"do_sample_frames": False, **image}
        video_type = "Qwen2VLVideoProcessor"
    _write_json(out / "preprocessor_config.json", {"image_processor_type": "Qwen2VLImageProcessor", **image})
    _write_json(out / "video_preprocessor_config.json", {"video_processor_type": video_type, **video})
    _write_json(out / "processor_config.json", {"processor_class": PROCESSOR_CLASS[arch]})


def _build_qwen2_vl(text: dict[str, Any], ids: dict[str, int], sizes: ToySizes) -> Any:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    config = Qwen2VLConfig(
        text_config={**text, "rope_parameters": _mrope(sizes, interleaved=False)},
        vision_config={
            "depth": sizes.vision_depth,
            "embed_dim": sizes.vision_hidden_size,
            "hidden_size": sizes.hidden_size,  # the merger's output: the decoder's width
            "mlp_ratio": 2,
            "num_heads": 4,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        **ids,
        tie_word_embeddings=False,
    )
    return Qwen2VLForConditionalGeneration(config)


def _build_qwen2_5_vl(text: dict[str, Any], ids: dict[str, int], sizes: ToySizes) -> Any:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config={**text, "rope_parameters": _mrope(sizes, interleaved=False)},
        vision_config={
            "depth": sizes.vision_depth,
            "hidden_size": sizes.vision_hidden_size,
            "intermediate_size": 2 * sizes.vision_hidden_size,
            "num_heads": 4,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": list(range(1, sizes.vision_depth, 2)),
            "out_hidden_size": sizes.hidden_size,
        },
        **ids,
        tie_word_embeddings=False,
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def _build_qwen3_vl(text: dict[str, Any], ids: dict[str, int], sizes: ToySizes) -> Any:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    # deepstack: features of the vision blocks before the last, added to the first decoder layers
    deepstack = list(range(max(1, sizes.vision_depth - 1)))[: sizes.num_layers]
    config = Qwen3VLConfig(
        text_config={**text, "head_dim": sizes.head_dim, "rope_parameters": _mrope(sizes, interleaved=True)},
        vision_config={
            "depth": sizes.vision_depth,
            "hidden_size": sizes.vision_hidden_size,
            "intermediate_size": 2 * sizes.vision_hidden_size,
            "num_heads": 4,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": sizes.hidden_size,
            "num_position_embeddings": 64,  # an 8 x 8 grid, interpolated to each image's
            "deepstack_visual_indexes": deepstack,
        },
        **ids,
        tie_word_embeddings=False,
    )
    return Qwen3VLForConditionalGeneration(config)


BUILDERS = {"qwen2_vl": _build_qwen2_vl, "qwen2_5_vl": _build_qwen2_5_vl, "qwen3_vl": _build_qwen3_vl}


def build_qwen_vl(arch: str, out: Path, vocab: dict[str, int], sizes: ToySizes) -> Any:
    """A randomly initialised Qwen-VL model of `arch`; writes its processor files to `out`."""
    model = BUILDERS[arch](text_kwargs(vocab, sizes), _token_ids(vocab), sizes)
    write_processor_files(arch, out)
    return model
