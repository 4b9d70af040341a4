"""TextAnchoredDrafter: the Sparrow drafting step, independent of vLLM's runner.

One step, for the rows the target verified (EAGLE pairing, row i = (x_{i+1}, h_i)):
  1. keep valid rows (not rejected) whose input token is text, plus each request's
     sample row (its last valid row, which carries the next token);
  2. run the draft on them, attending over the request's cached text rows (only the last
     W with a window) and causally among themselves;
  3. commit the text rows' K/V to the TextKVCache (visual rows never enter it);
  4. draft a chain of K tokens from the sample rows; chain rows are scratch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sparrow_vllm.attention import text_window_attention
from sparrow_vllm.modeling.draft_model import AttentionFn
from sparrow_vllm.modeling.vllm_draft import SparrowDraftForCausalLM
from sparrow_vllm.text_kv_cache import TextKVCache

# hidden [B, H] -> (tokens [B], probabilities [B, vocab] or None)
SampleFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class StepInputs:
    """What the target verified this step, flattened over the batch."""

    req_ids: list[str]
    # [N] token ids the target processed
    token_ids: torch.Tensor
    # [N] int64 positions (row 0 of M-RoPE)
    positions: torch.Tensor
    # [N, H] target hidden states (the draft's feature)
    hidden_states: torch.Tensor
    # [B] next token per request (sampled, or the next prompt token)
    next_token_ids: torch.Tensor
    # [B] index of each request's last valid row
    sample_idx: torch.Tensor
    # [B + 1] int64 query start of each request
    query_start: torch.Tensor
    # [B] int64 target sequence index of each request's first row
    seq_start: torch.Tensor
    # [B] int64 valid (not rejected) rows per request
    num_valid: torch.Tensor


@dataclass
class _NewRows:
    """The rows one attention call appends after each request's cached prefix."""

    # [B + 1] int64, rows of request b are cu_seqlens[b]:cu_seqlens[b + 1]
    cu_seqlens: torch.Tensor
    # [B] int64, pool slot per request
    slot_ids: torch.Tensor
    # [B] int64, cached rows visible before the new rows
    prefix_lens: torch.Tensor


class TextAnchoredDrafter:
    def __init__(
        self,
        model: SparrowDraftForCausalLM,
        cache: TextKVCache,
        window: int | None,
        placeholder_ids: list[int],
        max_model_len: int,
    ) -> None:
        self.model = model
        self.cache = cache
        self.window = window
        self.device = cache.k.device
        self.placeholder_ids = torch.tensor(placeholder_ids, dtype=torch.int64, device=self.device)
        self.max_model_len = max_model_len

    def step(
        self, inputs: StepInputs, num_tokens: int, sample: SampleFn
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Commit this step's verified text rows and draft `num_tokens` tokens per request.

        Returns drafts [B, K] and, when `sample` gives them, probabilities [B, K, vocab].
        """
        batch = len(inputs.req_ids)
        n_rows = inputs.token_ids.shape[0]
        qsl = inputs.query_start
        qlen = qsl[1:] - qsl[:-1]
        slots = self._prepare_slots(inputs)

        # Row i carries token x_{i+1}; each request's sample row carries its next token.
        input_ids = torch.empty(n_rows, dtype=torch.int64, device=self.device)
        input_ids[: n_rows - 1] = inputs.token_ids[1:n_rows]
        input_ids[inputs.sample_idx] = inputs.next_token_ids.long()

        row_req = torch.repeat_interleave(torch.arange(batch, device=self.device), qlen)
        local = torch.arange(n_rows, device=self.device) - qsl[:-1][row_req]
        is_valid = local < inputs.num_valid[row_req]
        is_text = ~torch.isin(input_ids, self.placeholder_ids)
        is_sample = torch.zeros(n_rows, dtype=torch.bool, device=self.device)
        is_sample[inputs.sample_idx] = True
        keep = torch.nonzero(is_valid & (is_text | is_sample)).squeeze(1)
        keep_req = row_req[keep]

        rows = _NewRows(
            _cumsum0(torch.bincount(keep_req, minlength=batch)), slots, self.cache.lengths[slots]
        )
        records: list[tuple[torch.Tensor, torch.Tensor]] = []
        out = self.model(
            self.model.embed_input_ids(input_ids[keep]),
            inputs.hidden_states[keep],
            inputs.positions[keep].long(),
            self._attend_fn(rows, records),
        )
        self._commit(records, rows, keep_req, is_text[keep], inputs.seq_start, local[keep],
                     input_ids[keep])

        if num_tokens == 0:  # e.g. vLLM's dynamic speculation chose K = 0 this step
            return torch.empty(batch, 0, dtype=torch.int64, device=self.device), None
        # The sample row is the last kept row of each request.
        hidden = out[rows.cu_seqlens[1:] - 1]
        pos = inputs.positions[inputs.sample_idx].long()
        return self._draft_chain(hidden, pos, slots, num_tokens, sample)

    def release(self, req_id: str) -> None:
        self.cache.release(req_id)

    def cached_rows(self) -> dict[str, dict[str, list[int]]]:
        """Per live request: target sequence index and input token id of each cached row."""
        out = {}
        for req_id in self.cache.live_requests:
            seq, tokens = self.cache.committed(req_id)
            out[req_id] = {"seq": seq, "tokens": tokens}
        return out

    def warm_up(self, num_rows: int, hidden_size: int, dtype: torch.dtype) -> None:
        """The draft over `num_rows` rows with no cache (warm-up and memory profiling)."""
        zeros = torch.zeros(num_rows, hidden_size, dtype=dtype, device=self.device)
        zero = torch.zeros(1, dtype=torch.int64, device=self.device)
        rows = _NewRows(torch.tensor([0, num_rows], device=self.device), zero, zero)
        self.model(zeros, zeros, torch.arange(num_rows, device=self.device),
                   self._attend_fn(rows, None))

    # ---- internals ----------------------------------------------------------------------

    def _prepare_slots(self, inputs: StepInputs) -> torch.Tensor:
        """Host bookkeeping: a slot per request, rewound on recompute; returns [B] slots."""
        active = set(inputs.req_ids)
        starts = inputs.seq_start.tolist()
        ends = (inputs.seq_start + inputs.num_valid).tolist()
        slots = []
        for req_id, start, end in zip(inputs.req_ids, starts, ends, strict=True):
            slot = self.cache.prepare(req_id, start, active)
            self.cache.advance(slot, end)
            slots.append(slot)
        return torch.tensor(slots, dtype=torch.int64, device=self.device)

    def _commit(
        self,
        records: list[tuple[torch.Tensor, torch.Tensor]],
        rows: _NewRows,
        # [R] request of each kept row
        keep_req: torch.Tensor,
        # [R] bool, kept row is a text row (committed)
        commit: torch.Tensor,
        # [B] target sequence index of each request's first row
        seq_start: torch.Tensor,
        # [R] row index within its request's query
        keep_local: torch.Tensor,
        # [R] input token of each kept row
        keep_tokens: torch.Tensor,
    ) -> None:
        cache = self.cache
        idx = torch.nonzero(commit).squeeze(1)
        req = keep_req[idx]
        n_commit = torch.bincount(req, minlength=rows.slot_ids.shape[0])
        # absolute row = cached rows + rank among this request's committed rows
        rank = torch.arange(idx.shape[0], device=self.device) - _cumsum0(n_commit)[:-1][req]
        slot = rows.slot_ids[req]
        ring = (rows.prefix_lens[req] + rank) % cache.capacity
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
        num_tokens: int,
        sample: SampleFn,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch = hidden.shape[0]
        tokens, probs = sample(hidden)
        drafted, drafted_probs = [tokens], [probs]
        one_each = torch.arange(batch + 1, device=self.device)
        committed = self.cache.lengths[slots]
        for step in range(1, num_tokens):
            rows = _NewRows(one_each, slots, committed + (step - 1))
            records: list[tuple[torch.Tensor, torch.Tensor]] = []
            hidden = self.model(
                self.model.embed_input_ids(tokens),
                hidden,
                torch.clamp(pos + step, max=self.max_model_len - 1),
                self._attend_fn(rows, records),
            )
            ring = rows.prefix_lens % self.cache.capacity
            for layer, (k_new, v_new) in enumerate(records):
                self.cache.k[layer, slots, ring] = k_new
                self.cache.v[layer, slots, ring] = v_new
            tokens, probs = sample(hidden)
            drafted.append(tokens)
            drafted_probs.append(probs)
        stacked_probs = None
        if all(p is not None for p in drafted_probs):
            stacked_probs = torch.stack(drafted_probs, dim=1).contiguous()
        return torch.stack(drafted, dim=1), stacked_probs

    def _attend_fn(
        self, rows: _NewRows, record: list[tuple[torch.Tensor, torch.Tensor]] | None
    ) -> AttentionFn:
        cache = self.cache
        window = self.window

        def attend(layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            if record is not None:
                record.append((k, v))
            return text_window_attention(
                q, k, v, rows.cu_seqlens, cache.k[layer_idx], cache.v[layer_idx],
                rows.slot_ids, rows.prefix_lens, window=window,
            )

        return attend


def _cumsum0(x: torch.Tensor) -> torch.Tensor:
    """[n] -> [n + 1] exclusive prefix sum starting at 0."""
    return torch.nn.functional.pad(torch.cumsum(x, 0), (1, 0))
