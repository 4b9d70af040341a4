"""SparrowSpeculator: the Sparrow drafter inside Model Runner V2 (vllm/v1/worker/gpu/).

V2 builds its speculator in `init_speculator`; serving/vllm/patches.py routes a Sparrow draft here
instead of to `EagleSpeculator` (which would load the checkpoint as an EAGLE model). This
class translates V2's inputs into the drafter's `StepInputs` and hands the drafts back; the
drafting itself is TextAnchoredDrafter's, the same as on the V1 runner.

What V2 gives `propose` and how it maps (per request b of the batch, rows flattened):
  input_batch.input_ids / .query_start_loc  the rows the target verified this step
  input_batch.seq_lens - query length       target index of each request's first row
  num_rejected[b]                           rows rejected at the end of request b's query
  num_sampled[b] > 0                        a token was sampled: the next token is
                                            last_sampled[idx_mapping[b]]; otherwise (a
                                            partial prefill chunk) next_prefill_tokens
  M-RoPE positions                          row 0 of the model state's RopeState (what the
                                            target just used), else input_batch.positions
  aux_hidden_states[0]                      the target layer the draft reads, when its
                                            feature layer is not the final one
Draft tokens are sampled by DraftModelSpeculator.sample_draft (argmax, or V2's Gumbel
sampler with the draft-logits cache for `draft_sample_method: probabilistic`), so V2's
rejection sampler sees the proposal distribution it expects; with
`use_local_argmax_reduction` the argmax is SparrowDraftForCausalLM.get_top_tokens.

CUDA graphs: the draft forward is compiled when vLLM compiles, not captured (logged
once on CUDA; see ledger entry 7 in serving/vllm/patches.py for why).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from vllm.config.compilation import CUDAGraphMode
from vllm.v1.worker.gpu.spec_decode.speculator import DraftModelSpeculator

from sparrow_vllm.serving.draft_metrics import DraftStepMetrics
from sparrow_vllm.serving.drafter import StepInputs, TextAnchoredDrafter
from sparrow_vllm.serving.text_row_reuse import request_contents
from sparrow_vllm.serving.vllm.draft_loading import SparrowDraftSetup

logger = logging.getLogger(__name__)


class SparrowSpeculator(DraftModelSpeculator):
    """Model Runner V2 adapter: BaseSpeculator's interface over the TextAnchoredDrafter."""

    adapter_name = "v2"

    def __init__(self, vllm_config: Any, device: torch.device) -> None:
        super().__init__(vllm_config, device)
        self.setup = SparrowDraftSetup(vllm_config)
        self.draft_attn_layer_names: set[str] = set()
        self.drafter: TextAnchoredDrafter | None = None
        self.draft_metrics: DraftStepMetrics | None = None  # for /metrics (ledger entry 15)
        self.model_state: Any = None
        # [K] column index of each chain step in the draft-logits cache
        self._draft_steps = torch.arange(max(self.num_speculative_steps, 1), device=device)
        logger.info("Sparrow runner adapter: Model Runner V2 (SparrowSpeculator)")

    # ---- set-up (called by V2's model runner) -------------------------------------------

    def load_draft_model(self, target_model: nn.Module, target_attn_layer_names: set[str]) -> nn.Module:
        del target_attn_layer_names
        self.drafter = self.setup.build_drafter(target_model, self.dtype, self.device)
        self.draft_metrics = DraftStepMetrics(self.drafter.cache, self.adapter_name,
                                              f"{type(self).__module__}.{type(self).__qualname__}", self.device)
        return self.drafter.model

    def load_model(self, target_model: nn.Module) -> None:
        """The draft has no vLLM attention layers and reads no multimodal embeddings."""
        self.model = self.load_draft_model(target_model, set())
        # vLLM's own check, as DraftModelSpeculator.load_model runs it: greedy drafts only
        self._validate_local_argmax_reduction()
        self.draft_attn_layer_names = set()
        self.supports_mm_inputs = False
        if self.use_acceptance_estimator:
            raise ValueError(
                "Sparrow drafts do not support Model Runner V2's adaptive verification "
                "yet; remove enable_adaptive_verification from --speculative-config."
            )

    def set_attn(
        self,
        model_state: Any,
        kv_cache_config: Any,
        block_tables: Any,
        target_input_buffers: Any,
        target_attn_groups: Any,
    ) -> None:
        """No paged attention: keep the model state (its RopeState holds the M-RoPE
        positions of each step) and nothing else."""
        del kv_cache_config, block_tables, target_input_buffers, target_attn_groups
        self.model_state = model_state
        self.attn_groups = []

    def init_cudagraph_manager(self, cudagraph_mode: Any) -> None:
        if self.device.type == "cuda" and cudagraph_mode != CUDAGraphMode.NONE:
            logger.warning(
                "Sparrow drafting is not captured under CUDA graphs mode %s: the draft "
                "forward runs compiled (torch.compile, when vLLM compiles) but launched "
                "from the host, one launch sequence per chain step (the target's own "
                "graphs are unaffected; ledger entry 7)",
                cudagraph_mode,
            )

    def capture(self) -> None:
        """Nothing is captured (see init_cudagraph_manager)."""

    # ---- request life cycle -------------------------------------------------------------

    def on_request_finished(self, req_id: str) -> None:
        """V2 removes finished, aborted and preempted requests alike; a preempted request
        comes back as a new one and is drafted from what it is recomputed with."""
        if self.drafter is not None:
            self.drafter.release(req_id)

    def on_requests_added(self, new_reqs: list[Any]) -> None:
        """vLLM's NewRequestData of this step's new requests (their prompts key the rows)."""
        if self.drafter is not None:
            self.drafter.on_requests_added(request_contents(new_reqs))

    def cached_rows(self) -> dict[str, dict[str, list[int]]]:
        assert self.drafter is not None, "load_model() first"
        return self.drafter.cached_rows()

    # ---- one draft step -----------------------------------------------------------------

    @torch.inference_mode()
    def propose(
        self,
        input_batch: Any,
        attn_metadata: dict[str, Any],
        slot_mappings: dict[str, torch.Tensor],
        # [num_tokens, hidden_size]
        last_hidden_states: torch.Tensor,
        # num_layers x [num_tokens, hidden_size]
        aux_hidden_states: list[torch.Tensor] | None,
        # [num_reqs]
        num_sampled: torch.Tensor,
        # [num_reqs]
        num_rejected: torch.Tensor,
        # [max_num_reqs, 1]
        last_sampled: torch.Tensor,
        # [num_prefill_lookahead, max_num_reqs]
        next_prefill_tokens: torch.Tensor,
        # [max_num_reqs]
        temperature: torch.Tensor,
        # [max_num_reqs]
        seeds: torch.Tensor,
        dp_sync_state: Any = None,
        dummy_run: bool = False,
        skip_attn_for_dummy_run: bool = False,
        mm_inputs: Any = None,
        is_profile: bool = False,
        num_speculative_tokens: int | None = None,
    ) -> torch.Tensor:  # [num_reqs, num_speculative_steps] int64, -1 past the drafted ones
        del attn_metadata, slot_mappings, dp_sync_state, skip_attn_for_dummy_run, mm_inputs, is_profile
        assert self.drafter is not None, "load_model() first"
        num_reqs, num_tokens = input_batch.num_reqs, input_batch.num_tokens
        # this step's drafts: vLLM's keyword names them num_speculative_tokens
        num_draft_tokens = self.num_speculative_steps if num_speculative_tokens is None else num_speculative_tokens
        drafts = self.draft_tokens[:num_reqs]
        drafts.fill_(-1)
        if dummy_run:
            # warm-up / memory profiling: the draft over the batch's rows, no cache
            hidden_size = self.setup.checkpoint.layers.hidden_size
            self.drafter.warm_up(max(1, num_tokens), hidden_size, self.dtype)
            return drafts
        self._copy_request_inputs(num_reqs, input_batch.idx_mapping, temperature, seeds)

        idx = input_batch.idx_mapping[:num_reqs]
        qsl = input_batch.query_start_loc[: num_reqs + 1].long()
        qlen = qsl[1:] - qsl[:-1]
        num_valid = qlen - num_rejected[:num_reqs].long()
        # next token: the sampled one, or for a partial prefill chunk the next prompt token
        next_tokens = torch.where(
            num_sampled[:num_reqs] > 0,
            last_sampled.view(-1)[idx].long(),
            next_prefill_tokens[0][idx].long(),
        )
        positions = self._positions(input_batch)
        sample_idx = qsl[:-1] + num_valid - 1
        inputs = StepInputs(
            req_ids=list(input_batch.req_ids[:num_reqs]),
            token_ids=input_batch.input_ids[:num_tokens],
            positions=positions,
            hidden_states=self._features(last_hidden_states, aux_hidden_states)[:num_tokens],
            next_token_ids=next_tokens,
            sample_idx=sample_idx,
            query_start=qsl,
            seq_start=input_batch.seq_lens[:num_reqs].long() - qlen,
            # host values (exact for a request's first step, optimistic later)
            seq_start_host=(input_batch.seq_lens_cpu_upper_bound[:num_reqs].numpy()
                            - input_batch.num_scheduled_tokens[:num_reqs]).tolist(),
            num_valid=num_valid,
            max_query_len=int(input_batch.num_scheduled_tokens.max()),
        )
        # V2's sampler keys each draw by the position before the drafted token
        sample_pos = input_batch.positions[:num_tokens][sample_idx] + 1
        chain_step = iter(range(num_draft_tokens))

        def sample(hidden: torch.Tensor) -> tuple[torch.Tensor, None]:
            step = next(chain_step)
            tokens = self.sample_draft(
                hidden, sample_pos + step, self.idx_mapping[:num_reqs], self.temperature,
                self.seeds, self._draft_steps[step], self.draft_logits, spec_step_idx=step,
            )
            return tokens, None

        assert self.draft_metrics is not None
        started = self.draft_metrics.start()
        chain, _ = self.drafter.step(inputs, num_draft_tokens, sample)
        self.draft_metrics.stop(started, num_draft_tokens)
        drafts[:, :num_draft_tokens] = chain
        return drafts

    def _positions(self, input_batch: Any) -> torch.Tensor:  # [num_tokens] int64
        """The draft's positions: row 0 of the target's M-RoPE positions, or 1-D ones."""
        rope = getattr(self.model_state, "rope_state", None)
        if rope is not None:
            return rope.get_positions(input_batch.num_tokens)[0]
        return input_batch.positions[: input_batch.num_tokens]

    def _features(
        self,
        # [num_tokens, H]
        last_hidden_states: torch.Tensor,
        aux_hidden_states: list[torch.Tensor] | None,
    ) -> torch.Tensor:  # [num_tokens, H]
        if self.setup.aux_layer_index is None:
            return last_hidden_states
        if not aux_hidden_states:
            raise RuntimeError(
                "The Sparrow draft reads target layer "
                f"{self.setup.aux_layer_index}, but Model Runner V2 returned no auxiliary "
                "hidden states; this vLLM version's runner is not supported by sparrow-vllm"
            )
        return aux_hidden_states[0]
