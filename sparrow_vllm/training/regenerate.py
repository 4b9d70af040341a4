"""The target's own greedy answers for `extract-features --regenerate`: with vLLM (batched,
the default) or HF transformers' generate.

Both see exactly what feature extraction sees: the prompt rendered by the target's chat
template (`FeatureExtractor.prompt_text`), and the frames the dataset loader sampled, with
their time layout (`FeatureExtractor.video_metadata`) and no further frame sampling. The
answer comes back as token ids (EOS included), appended to the prompt's ids as they are.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import torch

from sparrow_vllm.training.data import ConversationSample
from sparrow_vllm.training.features import FeatureExtractor

logger = logging.getLogger(__name__)

RegenerateWith = Literal["vllm", "hf"]
# A CPU build of vLLM reserves this share of host memory for its KV cache; the default
# (0.9) refuses to start when the HF target is loaded beside it.
CPU_MEMORY_UTILIZATION = 0.3
# On a GPU the HF target (features) shares the device with the engine.
GPU_MEMORY_UTILIZATION = 0.6


class Regenerator(Protocol):
    def answers(self, samples: Sequence[ConversationSample]) -> list[list[int]]:
        """Greedy answer token ids for each sample, in order."""
        ...


class HFRegenerator:
    """HF transformers' generate, one sample at a time."""

    def __init__(self, extractor: FeatureExtractor, max_new_tokens: int) -> None:
        self.extractor, self.max_new_tokens = extractor, max_new_tokens

    def answers(self, samples: Sequence[ConversationSample]) -> list[list[int]]:
        return [self.extractor.hf_greedy_answer(s, self.max_new_tokens) for s in samples]


def vllm_engine_args(
    target_dir: str, max_model_len: int, limits: dict[str, int], overrides: dict[str, Any] | None
) -> dict[str, Any]:
    """Engine arguments for regeneration: float32 on CPU (greedy equal to the HF target's),
    the model's dtype on GPU; `overrides` (--regenerate-engine-args) win."""
    cuda = torch.cuda.is_available()
    args: dict[str, Any] = {
        "model": target_dir, "max_model_len": max_model_len, "seed": 0,
        "dtype": "auto" if cuda else "float32",
        "gpu_memory_utilization": GPU_MEMORY_UTILIZATION if cuda else CPU_MEMORY_UTILIZATION,
        "enable_prefix_caching": False,
        # compiling the model takes longer on a CPU than the regeneration it would speed up
        "enforce_eager": not cuda,
    }
    if limits:
        args["limit_mm_per_prompt"] = limits
    return {**args, **(overrides or {})}


class VLLMRegenerator:
    """A vLLM engine over the target (one per worker), greedy, batched per call."""

    def __init__(self, extractor: FeatureExtractor, max_new_tokens: int, engine_args: dict[str, Any]) -> None:
        if not torch.cuda.is_available():
            os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
            # On a CPU the engine runs in this process: starting its two processes takes
            # longer than a whole toy-scale regeneration (24 s against 52 s for 8 rows here).
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM, SamplingParams

        self.extractor = extractor
        logger.info("regenerating answers with vLLM (%s)",
                    ", ".join(f"{k}={v}" for k, v in engine_args.items() if k != "model"))
        self.llm = LLM(**engine_args)
        self.params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, detokenize=False)

    def _prompt(self, sample: ConversationSample) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if sample.video is not None:
            meta = {**self.extractor.video_metadata(sample), "video_backend": "numpy", "do_sample_frames": False}
            data["video"] = (sample.video, meta)
        if sample.images:
            data["image"] = sample.images if len(sample.images) > 1 else sample.images[0]
        prompt: dict[str, Any] = {"prompt": self.extractor.prompt_text(sample)}
        if data:
            prompt["multi_modal_data"] = data
        return prompt

    def answers(self, samples: Sequence[ConversationSample]) -> list[list[int]]:
        if not samples:
            return []
        outputs = self.llm.generate([self._prompt(s) for s in samples], self.params, use_tqdm=False)
        return [list(out.outputs[0].token_ids) for out in outputs]


def make_regenerator(
    kind: RegenerateWith, extractor: FeatureExtractor, max_new_tokens: int, engine_args: dict[str, Any]
) -> Regenerator:
    if kind == "hf":
        return HFRegenerator(extractor, max_new_tokens)
    return VLLMRegenerator(extractor, max_new_tokens, engine_args)
