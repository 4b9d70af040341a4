"""Qwen families: Qwen2 (text), Qwen2-VL, Qwen2.5-VL and Qwen3-VL."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property

from sparrow_vllm.families.base import TargetFamily, register_family

# Between two frames of one Qwen3-VL video vLLM writes `<vision_end> <t seconds> <vision_start>`;
# a gap longer than this (or with other markers in it) separates two videos.
MAX_FRAME_GAP = 32


@register_family
class Qwen2Family(TargetFamily):
    name = "qwen2"
    model_types = ("qwen2",)
    vllm_aux_hidden_states = True


class _QwenVLFamily(TargetFamily):
    """Shared by the Qwen VL families: `<|image_pad|>` / `<|video_pad|>` placeholders between
    `<|vision_start|>` and `<|vision_end|>`, M-RoPE positions."""

    positions = "mrope"
    modalities = ("image", "video")
    # transformers' model class whose get_rope_index training corrects to vLLM's rule
    _hf_module: str
    _hf_model: str

    @cached_property
    def placeholder_ids(self) -> frozenset[int]:
        return frozenset((int(self.config.image_token_id), int(self.config.video_token_id)))

    @property
    def vision_start_id(self) -> int:
        return int(self.config.vision_start_token_id)

    @property
    def vision_end_id(self) -> int:
        return int(self.config.vision_end_token_id)

    def training_positions(self) -> Callable[[], None] | None:
        from sparrow_vllm.training.serving_positions import use_serving_positions

        return lambda: use_serving_positions(self._hf_module, self._hf_model)


@register_family
class Qwen2VLFamily(_QwenVLFamily):
    name = "qwen2_vl"
    model_types = ("qwen2_vl",)
    vllm_aux_hidden_states = False  # vLLM 0.32's Qwen2VLForConditionalGeneration lacks EAGLE-3
    _hf_module = "transformers.models.qwen2_vl.modeling_qwen2_vl"
    _hf_model = "Qwen2VLModel"


@register_family
class Qwen2_5_VLFamily(_QwenVLFamily):  # noqa: N801 - the family's own spelling
    name = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    vllm_aux_hidden_states = True
    _hf_module = "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl"
    _hf_model = "Qwen2_5_VLModel"


@register_family
class Qwen3VLFamily(_QwenVLFamily):
    """Qwen3-VL writes each video frame as `<t seconds> <vision_start> pads <vision_end>`.

    Read literally, the timestamps and markers of a long video are thousands of text rows.
    `frame_text_spans` marks the text between two frames of one video (the closing marker,
    the next frame's timestamp and its opening marker) as part of the video; with the
    draft's frame_text="visual" (the default) the draft skips it, and only the first
    frame's timestamp stays text, a constant per video.
    """

    name = "qwen3_vl"
    model_types = ("qwen3_vl",)
    vllm_aux_hidden_states = True
    _hf_module = "transformers.models.qwen3_vl.modeling_qwen3_vl"
    _hf_model = "Qwen3VLModel"

    def frame_text_spans(self, token_ids: Sequence[int]) -> list[tuple[int, int]]:
        return frame_gaps(token_ids, int(self.config.video_token_id), self.vision_start_id,
                          self.vision_end_id, self.placeholder_ids)


def frame_gaps(
    token_ids: Sequence[int], video_id: int, start_id: int, end_id: int, placeholders: frozenset[int],
) -> list[tuple[int, int]]:
    """[start, end) gaps between consecutive runs of `video_id` that look like the seam of
    two frames of one video: the gap opens with `end_id`, closes with `start_id`, holds no
    other marker or placeholder, and is at most MAX_FRAME_GAP tokens long."""
    runs: list[tuple[int, int]] = []
    i, n = 0, len(token_ids)
    while i < n:
        if token_ids[i] == video_id:
            j = i
            while j < n and token_ids[j] == video_id:
                j += 1
            runs.append((i, j))
            i = j
        else:
            i += 1
    gaps = []
    markers = placeholders | {start_id, end_id}
    for (_, a), (b, _) in zip(runs, runs[1:], strict=False):
        inner = token_ids[a + 1 : b - 1]
        if (
            b - a <= MAX_FRAME_GAP and b - a >= 2
            and token_ids[a] == end_id and token_ids[b - 1] == start_id
            and not any(t in markers for t in inner)
        ):
            gaps.append((a, b))
    return gaps
