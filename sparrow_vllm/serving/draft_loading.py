"""Building the drafter from a checkpoint: what both runner adapters share at start-up.

`SparrowDraftSetup` validates the draft against the target (so a mismatch fails when the
server starts), sizes the TextKVCache and builds the TextAnchoredDrafter. The adapters only
pass in what their runner knows.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from sparrow_vllm.checkpoint import DraftCheckpoint, check_draft_for_target
from sparrow_vllm.config import SparrowConfigError
from sparrow_vllm.serving.drafter import TextAnchoredDrafter
from sparrow_vllm.serving.target_adapter import language_model_of, visual_placeholder_ids
from sparrow_vllm.serving.text_kv_cache import TextKVCache
from sparrow_vllm.serving.vllm_draft import SparrowDraftForCausalLM

logger = logging.getLogger(__name__)

CACHE_LIMIT_ENV = "SPARROW_DRAFT_CACHE_MAX_GIB"
DEFAULT_CACHE_MAX_GIB = 4.0


class SparrowDraftSetup:
    """The validated draft checkpoint of one engine, and how to build its drafter."""

    def __init__(self, vllm_config: Any) -> None:
        spec = vllm_config.speculative_config
        self.target_config = vllm_config.model_config.hf_config
        self.checkpoint: DraftCheckpoint = check_draft_for_target(
            spec.draft_model_config.model, self.target_config, target_supports_aux_hidden_states=True
        )
        self.num_speculative_tokens: int = spec.num_speculative_tokens
        self.max_model_len: int = vllm_config.model_config.max_model_len
        self.max_num_seqs: int = vllm_config.scheduler_config.max_num_seqs

    @property
    def aux_layer_index(self) -> int | None:
        """The target layer whose hidden states the draft reads; None for the final one."""
        return self.checkpoint.sparrow.aux_layer_index()

    def build_drafter(
        self, target_model: Any, dtype: torch.dtype, device: torch.device
    ) -> TextAnchoredDrafter:
        model = SparrowDraftForCausalLM.from_checkpoint(
            self.checkpoint, language_model_of(target_model), dtype, device
        )
        return TextAnchoredDrafter(
            model,
            self._allocate_cache(dtype, device),
            self.checkpoint.sparrow.window,
            visual_placeholder_ids(self.target_config),
            self.max_model_len,
        )

    def _allocate_cache(self, dtype: torch.dtype, device: torch.device) -> TextKVCache:
        layers, window = self.checkpoint.layers, self.checkpoint.sparrow.window
        rows = window if window is not None else self.max_model_len
        capacity = rows + self.num_speculative_tokens + 1
        slots = 2 * self.max_num_seqs  # paused (preempted) requests keep their rows
        shape = (layers.num_hidden_layers, slots, capacity, layers.num_key_value_heads, layers.head_dim)
        nbytes = TextKVCache.nbytes_for(*shape, dtype)
        limit = float(os.environ.get(CACHE_LIMIT_ENV, DEFAULT_CACHE_MAX_GIB))
        if nbytes > limit * 2**30:
            raise SparrowConfigError(
                f"The Sparrow draft cache would take {nbytes / 2**30:.2f} GiB ({slots} slots "
                f"x {capacity} text rows) > {CACHE_LIMIT_ENV}={limit}. Use a draft with a text "
                f"window (--window), lower --max-num-seqs or --max-model-len, or raise "
                f"{CACHE_LIMIT_ENV}."
            )
        logger.info(
            "Sparrow draft cache: %d slots x %d text rows, %.1f MiB, window=%s",
            slots, capacity, nbytes / 2**20, window,
        )
        return TextKVCache(*shape, dtype, device)
