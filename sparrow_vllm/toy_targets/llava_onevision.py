"""A LLaVA-OneVision toy target: Qwen2 decoder (1-D positions), SigLIP vision tower.

The tower sees 56*56 tiles (4 x 4 patches of 14 pixels, so 16 tokens per tile). An image is
tiled "anyres": a base tile of the whole image plus a grid of up to 3 x 3 tiles (the
`image_grid_pinpoints`), with a newline token per row; 112*112 pixels make 16 + 8 * (8 + 1)
= 88 `<image>` tokens. Each video frame is one tile pooled 2 x 2 to 4 tokens, and a video
ends with one newline: 8 frames make 8 * 4 + 1 = 33 `<video>` tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sparrow_vllm.toy_targets.text import ToySizes, text_kwargs

TILE = 56  # pixels per side of a tile: the SigLIP tower's image_size
PATCH = 14
MAX_TILES_PER_SIDE = 3
PINPOINTS = [[TILE * h, TILE * w] for h in range(1, MAX_TILES_PER_SIDE + 1) for w in range(1, MAX_TILES_PER_SIDE + 1)]
ASPECT_RATIO = "anyres_max_9"
SIGLIP_MEAN_STD = [0.5, 0.5, 0.5]


def write_processor_files(out: Path) -> None:
    common: dict[str, Any] = {
        "do_resize": True,
        "do_rescale": True,
        "do_normalize": True,
        "do_convert_rgb": True,
        "image_mean": SIGLIP_MEAN_STD,
        "image_std": SIGLIP_MEAN_STD,
        "resample": 3,  # bicubic
        "size": {"height": TILE, "width": TILE},
    }
    image = {
        "image_processor_type": "LlavaOnevisionImageProcessor",
        "do_pad": True,
        "image_grid_pinpoints": PINPOINTS,
        **common,
    }
    video = {"video_processor_type": "LlavaOnevisionVideoProcessor", "do_sample_frames": False, **common}
    processor = {
        "processor_class": "LlavaOnevisionProcessor",
        "num_image_tokens": (TILE // PATCH) ** 2,
        "vision_feature_select_strategy": "full",
        "vision_aspect_ratio": ASPECT_RATIO,
        "image_token": "<image>",
        "video_token": "<video>",
    }
    for name, data in [("preprocessor_config.json", image), ("video_preprocessor_config.json", video),
                       ("processor_config.json", processor)]:
        (out / name).write_text(json.dumps(data, indent=2))


def write_llava_hf_weight_names(out: Path) -> None:
    """transformers 5 saves the SigLIP tower's weights as `vision_tower.<name>`; llava-hf's
    checkpoints, and vLLM 0.32's loader, spell them `vision_tower.vision_model.<name>`.
    transformers loads either, so the saved file is rewritten in llava-hf's spelling."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = out / "model.safetensors"  # a toy target is one shard
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    tensors = load_file(path)
    prefix, canonical = "vision_tower.", "vision_tower.vision_model."
    renamed = {
        canonical + k[len(prefix):] if k.startswith(prefix) and not k.startswith(canonical) else k: v
        for k, v in tensors.items()
    }
    save_file(renamed, path, metadata=metadata)


def build_llava_onevision(out: Path, vocab: dict[str, int], sizes: ToySizes) -> Any:
    """A randomly initialised LlavaOnevisionForConditionalGeneration; writes its processor
    files to `out`."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    text = {
        **text_kwargs(vocab, sizes),
        "model_type": "qwen2",
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    }
    config = LlavaOnevisionConfig(
        text_config=text,
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": sizes.vision_hidden_size,
            "intermediate_size": 2 * sizes.vision_hidden_size,
            "num_hidden_layers": sizes.vision_depth,
            "num_attention_heads": 4,
            "image_size": TILE,
            "patch_size": PATCH,
            "vision_use_head": False,
        },
        image_token_index=vocab["<image>"],
        video_token_index=vocab["<video>"],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=PINPOINTS,
        vision_aspect_ratio=ASPECT_RATIO,
        tie_word_embeddings=False,
    )
    model = LlavaOnevisionForConditionalGeneration(config)
    write_processor_files(out)
    return model
