"""LLaVA-OneVision: a Qwen2 language model behind a SigLIP tower, 1-D positions, `<image>`
and `<video>` placeholders (anyres image tiles and pooled video frames both expand to
runs of the placeholder)."""

from __future__ import annotations

from functools import cached_property

from sparrow_vllm.families.base import TargetFamily, register_family


@register_family
class LlavaOnevisionFamily(TargetFamily):
    name = "llava_onevision"
    model_types = ("llava_onevision",)
    positions = "1d"
    modalities = ("image", "video")
    # vLLM 0.32's LlavaOnevisionForConditionalGeneration does not implement EAGLE-3's
    # auxiliary hidden states, so only the final hidden state reaches the draft
    vllm_aux_hidden_states = False

    @cached_property
    def placeholder_ids(self) -> frozenset[int]:
        return frozenset((int(self.config.image_token_index), int(self.config.video_token_index)))
