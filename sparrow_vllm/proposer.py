"""SparrowProposer: the Sparrow drafter inside vLLM's model runner.

vLLM runs "sparrow" as method "eagle" (scheduler look-ahead slots, rejection sampler,
metrics and hidden-state plumbing all apply) and builds this proposer instead of
EagleProposer when the draft is a Sparrow checkpoint (see vllm_patches.py). Unlike EAGLE,
the draft owns no paged KV cache: TextAnchoredDrafter keeps a TextKVCache of text rows.
This class only translates between the runner and the drafter.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from vllm.v1.spec_decode.eagle import EagleProposer

from sparrow_vllm.checkpoint import DraftCheckpoint, check_draft_for_target
from sparrow_vllm.config import SparrowConfigError
from sparrow_vllm.drafting import StepInputs, TextAnchoredDrafter
from sparrow_vllm.modeling.vllm_draft import SparrowDraftForCausalLM
from sparrow_vllm.target_adapter import language_model_of, visual_placeholder_ids
from sparrow_vllm.text_kv_cache import TextKVCache

logger = logging.getLogger(__name__)

CACHE_LIMIT_ENV = "SPARROW_DRAFT_CACHE_MAX_GIB"
DEFAULT_CACHE_MAX_GIB = 4.0


class SparrowProposer(EagleProposer):
    def __init__(self, vllm_config: Any, device: torch.device, runner: Any = None) -> None:
        super().__init__(vllm_config, device, runner)
        self.runner = runner
        self.target_config = vllm_config.model_config.hf_config
        self.checkpoint: DraftCheckpoint = check_draft_for_target(
            self.draft_model_config.model, self.target_config, target_supports_aux_hidden_states=True
        )
        # The draft reads no multimodal embeddings and owns no paged KV layers: the
        # runner must not gather embeddings for it, and must hand it group 0's metadata.
        self.supports_mm_inputs = False
        self.kv_cache_gid = 0
        self._draft_attn_layer_names: set[str] = set()
        self.drafter: TextAnchoredDrafter | None = None

    # ---- set-up -------------------------------------------------------------------------

    def load_model(self, target_model: Any) -> None:
        self.model = SparrowDraftForCausalLM.from_checkpoint(
            self.checkpoint, language_model_of(target_model), self.dtype, self.device
        )
        self.drafter = TextAnchoredDrafter(
            self.model,
            self._allocate_cache(),
            self.checkpoint.sparrow.window,
            visual_placeholder_ids(self.target_config),
            self.max_model_len,
        )

    def _allocate_cache(self) -> TextKVCache:
        layers, window = self.checkpoint.layers, self.checkpoint.sparrow.window
        capacity = (window if window is not None else self.max_model_len) + self.num_speculative_tokens + 1
        slots = 2 * self.max_batch_size  # paused (preempted) requests keep their rows
        shape = (layers.num_hidden_layers, slots, capacity, layers.num_key_value_heads, layers.head_dim)
        nbytes = TextKVCache.nbytes_for(*shape, self.dtype)
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
        return TextKVCache(*shape, self.dtype, self.device)

    def validate_same_kv_cache_group(self, kv_cache_config: Any) -> None:
        """The Sparrow draft has no paged KV layers, so there is no group to check."""
        del kv_cache_config

    def initialize_attn_backend(self, kv_cache_config: Any, kernel_block_sizes: Any = None) -> None:
        """No paged attention layers: the draft attends through text_window_attention."""
        del kv_cache_config, kernel_block_sizes
        self.kv_cache_gid = 0

    def initialize_cudagraph_keys(self, cudagraph_mode: Any) -> None:
        """The draft runs eagerly; nothing to capture."""
        del cudagraph_mode

    def on_request_finished(self, req_id: str) -> None:
        if self.drafter is not None:
            self.drafter.release(req_id)

    def on_requests_resumed(self, req_ids: set[str]) -> None:
        if self.drafter is not None:
            self.drafter.on_requests_resumed(req_ids)

    def dummy_run(self, num_tokens: int, *args: Any, **kwargs: Any) -> None:
        """Warm-up / profiling pass: the draft over `num_tokens` rows, no cache."""
        del args, kwargs
        assert self.drafter is not None, "load_model() first"
        rows = max(1, min(num_tokens, self.max_num_tokens))
        self.drafter.warm_up(rows, self.checkpoint.layers.hidden_size, self.dtype)

    def cached_rows(self) -> dict[str, dict[str, list[int]]]:
        assert self.drafter is not None, "load_model() first"
        return self.drafter.cached_rows()

    # ---- one draft step -----------------------------------------------------------------

    def propose(
        self,
        num_speculative_tokens: int,
        # [N] token ids the target processed this step
        target_token_ids: torch.Tensor,
        # [N] or [3, N] (M-RoPE) target positions
        target_positions: torch.Tensor,
        # [N, H] target hidden states (the draft's feature layer)
        target_hidden_states: torch.Tensor,
        # [B] next token of each request (sampled, or the next prompt token)
        next_token_ids: torch.Tensor,
        # [B] index of each request's last valid row, None = last row
        token_indices_to_sample: torch.Tensor | None,
        common_attn_metadata: Any,
        sampling_metadata: Any,
        mm_embed_inputs: Any = None,
        # [B] rows rejected at the end of each request's query, None = none
        num_rejected_tokens_gpu: torch.Tensor | None = None,
        slot_mappings: Any = None,
    ) -> torch.Tensor:  # [B, K] int64
        del mm_embed_inputs, slot_mappings
        assert self.drafter is not None, "load_model() first"
        self.num_speculative_tokens = num_speculative_tokens
        cad = common_attn_metadata
        batch = cad.num_reqs
        qsl = cad.query_start_loc[: batch + 1].long()
        qlen = qsl[1:] - qsl[:-1]
        rejected = 0 if num_rejected_tokens_gpu is None else num_rejected_tokens_gpu.long()
        inputs = StepInputs(
            req_ids=list(self.runner.input_batch.req_ids[:batch]),
            token_ids=target_token_ids,
            positions=target_positions[0] if target_positions.dim() == 2 else target_positions,
            hidden_states=target_hidden_states,
            next_token_ids=next_token_ids,
            sample_idx=qsl[1:] - 1 if token_indices_to_sample is None else token_indices_to_sample.long(),
            query_start=qsl,
            seq_start=cad.seq_lens[:batch].long() - qlen,
            num_valid=qlen - rejected,
            max_query_len=int(cad.max_query_len),
        )
        drafts, probs = self.drafter.step(
            inputs,
            num_speculative_tokens,
            lambda hidden: self._sample_draft_tokens(hidden, sampling_metadata),
        )
        self._last_draft_probs = probs
        return drafts
