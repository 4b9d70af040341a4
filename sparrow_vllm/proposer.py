"""SparrowProposer: text-anchored drafting on vLLM's EAGLE runtime.

vLLM runs "sparrow" as method "eagle" (scheduler look-ahead slots, rejection sampler,
metrics and hidden-state plumbing all apply) and builds this proposer instead of
EagleProposer when the draft is a Sparrow checkpoint (see vllm_patches.py). Unlike EAGLE,
the draft has no paged KV cache: it keeps its own TextKVCache of text rows only.

One step, for the rows the target verified this step (EAGLE pairing, row i = (x_{i+1}, h_i)):
  1. keep valid rows (not rejected) whose input token is text, plus each request's
     sample row (the last valid row, which carries the next token);
  2. run the draft on them, attending over the request's cached text rows (optionally
     only the last W) and causally among themselves;
  3. commit the text rows' K/V to the cache;
  4. draft a chain of K tokens from the sample rows; chain rows are scratch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from vllm.v1.spec_decode.eagle import EagleProposer

from sparrow_vllm.attention import text_window_attention
from sparrow_vllm.checkpoint import DraftCheckpoint, check_draft_for_target
from sparrow_vllm.config import SparrowConfigError
from sparrow_vllm.modeling.vllm_draft import SparrowDraftForCausalLM
from sparrow_vllm.target_adapter import language_model_of, visual_placeholder_ids
from sparrow_vllm.text_kv_cache import TextKVCache

logger = logging.getLogger(__name__)

# Upper bound of the draft cache, GiB; override with SPARROW_DRAFT_CACHE_MAX_GIB.
DEFAULT_CACHE_MAX_GIB = 4.0


@dataclass
class _NewRows:
    """The rows one attention call appends after each request's cached prefix."""

    # [B + 1] int64, rows of request b are cu_seqlens[b]:cu_seqlens[b + 1]
    cu_seqlens: torch.Tensor
    # [B] int64, pool slot per request
    slot_ids: torch.Tensor
    # [B] int64, cached rows visible before the new rows
    prefix_lens: torch.Tensor


class SparrowProposer(EagleProposer):
    def __init__(self, vllm_config: Any, device: torch.device, runner: Any = None) -> None:
        super().__init__(vllm_config, device, runner)
        self.runner = runner
        target_config = vllm_config.model_config.hf_config
        self.checkpoint: DraftCheckpoint = check_draft_for_target(
            self.draft_model_config.model, target_config, target_supports_aux_hidden_states=True
        )
        self.window = self.checkpoint.sparrow.window
        self.placeholder_ids = torch.tensor(
            visual_placeholder_ids(target_config), dtype=torch.int64, device=device
        )
        # The draft reads no multimodal embeddings and owns no paged KV layers: the
        # runner must not gather embeddings for it, and must hand it group 0's metadata.
        self.supports_mm_inputs = False
        self.kv_cache_gid = 0
        self._draft_attn_layer_names: set[str] = set()
        self.cache: TextKVCache | None = None

    # ---- set-up -------------------------------------------------------------------------

    def load_model(self, target_model: Any) -> None:
        self.model = SparrowDraftForCausalLM.from_checkpoint(
            self.checkpoint, language_model_of(target_model), self.dtype, self.device
        )
        self.cache = self._allocate_cache()

    def _allocate_cache(self) -> TextKVCache:
        import os

        layers = self.checkpoint.layers
        k = self.num_speculative_tokens
        capacity = (self.window if self.window is not None else self.max_model_len) + k + 1
        slots = 2 * self.max_batch_size  # paused (preempted) requests keep their rows
        args = (layers.num_hidden_layers, slots, capacity, layers.num_key_value_heads,
                layers.head_dim)
        nbytes = TextKVCache.nbytes_for(*args, self.dtype)
        limit = float(os.environ.get("SPARROW_DRAFT_CACHE_MAX_GIB", DEFAULT_CACHE_MAX_GIB))
        if nbytes > limit * 2**30:
            raise SparrowConfigError(
                f"The Sparrow draft cache would take {nbytes / 2**30:.2f} GiB ({slots} slots "
                f"x {capacity} text rows) > SPARROW_DRAFT_CACHE_MAX_GIB={limit}. Use a draft "
                "with a text window (--window), lower --max-num-seqs or --max-model-len, "
                "or raise SPARROW_DRAFT_CACHE_MAX_GIB."
            )
        logger.info(
            "Sparrow draft cache: %d slots x %d text rows, %.1f MiB, window=%s",
            slots, capacity, nbytes / 2**20, self.window,
        )
        return TextKVCache(*args, self.dtype, self.device)

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
        if self.cache is not None:
            self.cache.release(req_id)

    def dummy_run(self, num_tokens: int, *args: Any, **kwargs: Any) -> None:
        """Warm-up / profiling pass: the draft over `num_tokens` rows, no cache."""
        del args, kwargs
        n = max(1, min(num_tokens, self.max_num_tokens))
        h = self.checkpoint.layers.hidden_size
        zeros = torch.zeros(n, h, dtype=self.dtype, device=self.device)
        positions = torch.arange(n, device=self.device)
        rows = self._empty_prefix_rows(n)
        self.model(zeros, zeros, positions, self._attend_fn(rows, record=None))

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
        assert self.cache is not None, "load_model() first"
        self.num_speculative_tokens = num_speculative_tokens
        self._last_draft_probs = None
        cad = common_attn_metadata
        batch = cad.num_reqs
        n_rows = target_token_ids.shape[0]
        qsl = cad.query_start_loc[: batch + 1].long()
        qlen = qsl[1:] - qsl[:-1]
        sample_idx = qsl[1:] - 1 if token_indices_to_sample is None else token_indices_to_sample.long()
        rejected = (
            torch.zeros_like(qlen) if num_rejected_tokens_gpu is None else num_rejected_tokens_gpu.long()
        )
        valid = qlen - rejected
        seq_start = cad.seq_lens[:batch].long() - qlen

        slots = self._prepare_slots(batch, seq_start, valid)

        # Row i carries token x_{i+1}; each request's sample row carries its next token.
        input_ids = torch.empty(n_rows, dtype=torch.int64, device=self.device)
        input_ids[: n_rows - 1] = target_token_ids[1:n_rows]
        input_ids[sample_idx] = next_token_ids.long()
        positions = target_positions[0] if target_positions.dim() == 2 else target_positions

        row_req = torch.repeat_interleave(torch.arange(batch, device=self.device), qlen)
        local = torch.arange(n_rows, device=self.device) - qsl[:-1][row_req]
        is_valid = local < valid[row_req]
        is_text = ~torch.isin(input_ids, self.placeholder_ids)
        is_sample = torch.zeros(n_rows, dtype=torch.bool, device=self.device)
        is_sample[sample_idx] = True
        keep = torch.nonzero(is_valid & (is_text | is_sample)).squeeze(1)
        commit = is_text[keep]
        keep_req = row_req[keep]

        counts = torch.bincount(keep_req, minlength=batch)
        prefix = self.cache.lengths[slots]
        rows = _NewRows(_cumsum0(counts), slots, prefix)
        records: list[tuple[torch.Tensor, torch.Tensor]] = []
        out = self.model(
            self.model.embed_input_ids(input_ids[keep]),
            target_hidden_states[keep],
            positions[keep].long(),
            self._attend_fn(rows, record=records),
        )
        self._commit(records, rows, keep_req, commit, seq_start, local[keep], input_ids[keep])

        # The sample row is the last kept row of each request.
        last = rows.cu_seqlens[1:] - 1
        hidden = out[last]
        pos = positions[sample_idx].long()
        return self._draft_chain(hidden, pos, slots, sampling_metadata)

    def _prepare_slots(self, batch: int, seq_start: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Host bookkeeping: slot per request, rewound on recompute; returns [B] slots."""
        assert self.cache is not None
        req_ids = self.runner.input_batch.req_ids[:batch]
        active = set(req_ids)
        starts = seq_start.tolist()
        ends = (seq_start + valid).tolist()
        slots = []
        for req_id, start, end in zip(req_ids, starts, ends, strict=True):
            slot = self.cache.prepare(req_id, start, active)
            self.cache.advance(slot, end)
            slots.append(slot)
        return torch.tensor(slots, dtype=torch.int64, device=self.device)

    def _commit(
        self,
        records: list[tuple[torch.Tensor, torch.Tensor]],
        rows: _NewRows,
        keep_req: torch.Tensor,
        commit: torch.Tensor,
        seq_start: torch.Tensor,
        keep_local: torch.Tensor,
        keep_tokens: torch.Tensor,
    ) -> None:
        """Write the K/V of verified text rows to the cache; advance its lengths."""
        cache = self.cache
        assert cache is not None
        idx = torch.nonzero(commit).squeeze(1)
        req = keep_req[idx]
        # absolute row index = cached rows + rank among this request's committed rows
        n_commit = torch.bincount(req, minlength=rows.slot_ids.shape[0])
        rank = torch.arange(idx.shape[0], device=self.device) - _cumsum0(n_commit)[:-1][req]
        absolute = rows.prefix_lens[req] + rank
        slot = rows.slot_ids[req]
        ring = absolute % cache.capacity
        for layer, (k_new, v_new) in enumerate(records):
            cache.k[layer, slot, ring] = k_new[idx]
            cache.v[layer, slot, ring] = v_new[idx]
        cache.row_seq[slot, ring] = seq_start[req] + keep_local[idx]
        cache.row_token[slot, ring] = keep_tokens[idx]
        cache.lengths[rows.slot_ids] += n_commit

    def _draft_chain(
        self,
        # [B, H] draft output at each request's sample row
        hidden: torch.Tensor,
        # [B] position of the sample row
        pos: torch.Tensor,
        # [B] pool slots
        slots: torch.Tensor,
        sampling_metadata: Any,
    ) -> torch.Tensor:  # [B, K]
        assert self.cache is not None
        batch = hidden.shape[0]
        tokens, probs = self._sample_draft_tokens(hidden, sampling_metadata)
        drafted, drafted_probs = [tokens], [probs]
        one_each = torch.arange(batch + 1, device=self.device)
        committed = self.cache.lengths[slots]
        max_pos = self.max_model_len - 1
        for step in range(1, self.num_speculative_tokens):
            rows = _NewRows(one_each, slots, committed + (step - 1))
            records: list[tuple[torch.Tensor, torch.Tensor]] = []
            hidden = self.model(
                self.model.embed_input_ids(tokens),
                hidden,
                torch.clamp(pos + step, max=max_pos),
                self._attend_fn(rows, record=records),
            )
            ring = rows.prefix_lens % self.cache.capacity
            for layer, (k_new, v_new) in enumerate(records):
                self.cache.k[layer, slots, ring] = k_new
                self.cache.v[layer, slots, ring] = v_new
            tokens, probs = self._sample_draft_tokens(hidden, sampling_metadata)
            drafted.append(tokens)
            drafted_probs.append(probs)
        if all(p is not None for p in drafted_probs):
            self._last_draft_probs = torch.stack(drafted_probs, dim=1).contiguous()
        return torch.stack(drafted, dim=1)

    # ---- attention ----------------------------------------------------------------------

    def _attend_fn(self, rows: _NewRows, record: list[tuple[torch.Tensor, torch.Tensor]] | None):
        cache = self.cache
        assert cache is not None

        def attend(layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            if record is not None:
                record.append((k, v))
            return text_window_attention(
                q, k, v, rows.cu_seqlens, cache.k[layer_idx], cache.v[layer_idx],
                rows.slot_ids, rows.prefix_lens, window=self.window,
            )

        return attend

    def _empty_prefix_rows(self, n: int) -> _NewRows:
        zero = torch.zeros(1, dtype=torch.int64, device=self.device)
        return _NewRows(torch.tensor([0, n], device=self.device), zero, zero)

    # ---- inspection ---------------------------------------------------------------------

    def cached_rows(self) -> dict[str, dict[str, list[int]]]:
        """Per live request: target sequence index and input token id of each cached row."""
        assert self.cache is not None
        out = {}
        for req_id in self.cache.live_requests:
            seq, tokens = self.cache.committed(req_id)
            out[req_id] = {"seq": seq, "tokens": tokens}
        return out


def _cumsum0(x: torch.Tensor) -> torch.Tensor:
    """[n] -> [n + 1] exclusive prefix sum starting at 0."""
    return torch.nn.functional.pad(torch.cumsum(x, 0), (1, 0))
