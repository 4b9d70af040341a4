"""SparrowProposer: the Sparrow drafter inside vLLM's model runner.

vLLM runs "sparrow" as method "eagle" (scheduler look-ahead slots, rejection sampler,
metrics and hidden-state plumbing all apply) and builds this proposer instead of
EagleProposer when the draft is a Sparrow checkpoint (see serving/vllm/patches.py). Unlike EAGLE,
the draft owns no paged KV cache: TextAnchoredDrafter keeps a TextKVCache of text rows.
This class only translates between the V1 runner and the drafter; Model Runner V2 has its
own adapter (v2_speculator.py) over the same drafter.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from vllm.v1.spec_decode.eagle import EagleProposer

from sparrow_vllm.serving.draft_metrics import DraftStepMetrics
from sparrow_vllm.serving.drafter import StepInputs, TextAnchoredDrafter
from sparrow_vllm.serving.text_row_reuse import request_contents
from sparrow_vllm.serving.vllm.draft_loading import SparrowDraftSetup

logger = logging.getLogger(__name__)


class SparrowProposer(EagleProposer):
    """V1 runner adapter: EagleProposer's interface over the TextAnchoredDrafter."""

    adapter_name = "v1"

    def __init__(self, vllm_config: Any, device: torch.device, runner: Any = None) -> None:
        super().__init__(vllm_config, device, runner)
        self.runner = runner
        self.setup = SparrowDraftSetup(vllm_config)
        self.checkpoint = self.setup.checkpoint
        # The draft reads no multimodal embeddings and owns no paged KV layers: the
        # runner must not gather embeddings for it, and must hand it group 0's metadata.
        self.supports_mm_inputs = False
        self.kv_cache_gid = 0
        self._draft_attn_layer_names: set[str] = set()
        self.drafter: TextAnchoredDrafter | None = None
        self.draft_metrics: DraftStepMetrics | None = None  # for /metrics (ledger entry 15)
        logger.info("Sparrow runner adapter: V1 model runner (SparrowProposer)")

    # ---- set-up -------------------------------------------------------------------------

    def load_model(self, target_model: Any) -> None:
        self.drafter = self.setup.build_drafter(target_model, self.dtype, self.device)
        self.model = self.drafter.model
        self.draft_metrics = DraftStepMetrics(self.drafter.cache, self.adapter_name,
                                              f"{type(self).__module__}.{type(self).__qualname__}", self.device)

    def validate_same_kv_cache_group(self, kv_cache_config: Any) -> None:
        """The Sparrow draft has no paged KV layers, so there is no group to check."""
        del kv_cache_config

    def initialize_attn_backend(self, kv_cache_config: Any, kernel_block_sizes: Any = None) -> None:
        """No paged attention layers: the draft attends through text_window_attention."""
        del kv_cache_config, kernel_block_sizes
        self.kv_cache_gid = 0

    def initialize_cudagraph_keys(self, cudagraph_mode: Any) -> None:
        """Nothing is captured: the draft forward is compiled when vLLM compiles, and
        launched from the host (ledger entry 7)."""
        del cudagraph_mode

    def on_request_finished(self, req_id: str) -> None:
        if self.drafter is not None:
            self.drafter.release(req_id)

    def on_requests_added(self, new_reqs: list[Any]) -> None:
        """vLLM's NewRequestData of this step's new requests (their prompts key the rows)."""
        if self.drafter is not None:
            self.drafter.on_requests_added(request_contents(new_reqs))

    def on_requests_preempted(self, req_ids: set[str]) -> None:
        if self.drafter is not None:
            self.drafter.on_requests_preempted(req_ids)

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
        if cad.seq_lens_cpu_upper_bound is None:
            raise RuntimeError(
                "The Sparrow drafter needs CommonAttentionMetadata.seq_lens_cpu_upper_bound "
                "(the host's sequence lengths) from the V1 runner; this vLLM version's runner "
                "does not set it and is not supported by sparrow-vllm"
            )
        qsl_cpu = cad.query_start_loc_cpu[: batch + 1]
        seq_start_host = cad.seq_lens_cpu_upper_bound[:batch] - (qsl_cpu[1:] - qsl_cpu[:-1])
        inputs = StepInputs(
            req_ids=list(self.runner.input_batch.req_ids[:batch]),
            token_ids=target_token_ids,
            positions=target_positions[0] if target_positions.dim() == 2 else target_positions,
            hidden_states=target_hidden_states,
            next_token_ids=next_token_ids,
            sample_idx=qsl[1:] - 1 if token_indices_to_sample is None else token_indices_to_sample.long(),
            query_start=qsl,
            seq_start=cad.seq_lens[:batch].long() - qlen,
            seq_start_host=seq_start_host.tolist(),  # host tensors: no device read
            num_valid=qlen - rejected,
            max_query_len=int(cad.max_query_len),
        )
        assert self.draft_metrics is not None
        started = self.draft_metrics.start()
        drafts, probs = self.drafter.step(
            inputs,
            num_speculative_tokens,  # this step's drafts (vLLM's keyword)
            lambda hidden: self._sample_draft_tokens(hidden, sampling_metadata),
        )
        self.draft_metrics.stop(started, num_speculative_tokens)
        self._last_draft_probs = probs
        return drafts
