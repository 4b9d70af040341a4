"""TextAnchoredDrafter: the Sparrow drafting step, independent of vLLM's runner.

One step, for the rows the target verified (EAGLE pairing, row i = (x_{i+1}, h_i)):
  1. keep valid rows (not rejected) whose input token is text, plus each request's
     sample row (its last valid row, which carries the next token);
  2. run the draft on them, attending over the request's cached text rows (only the last
     W with a window) and causally among themselves;
  3. commit the text rows' K/V to the paged TextKVCache (visual rows never enter it; the
     host backs the rows with blocks before the write, from host-known bounds);
  4. draft a chain of K tokens from the sample rows; chain rows are scratch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sparrow_vllm.kernels.reference import TextWindowPlan
from sparrow_vllm.modeling.draft_model import AttentionFn
from sparrow_vllm.serving.attention import plan_attention, text_window_attention
from sparrow_vllm.serving.text_kv_cache import TextKVCache
from sparrow_vllm.serving.text_row_reuse import RequestContent
from sparrow_vllm.serving.visual_rows import VisualRows
from sparrow_vllm.serving.vllm_draft import SparrowDraftForCausalLM

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
    # host: seq_start as the runner knows it without reading the device (exact for a
    # request's first step; an upper bound later, under asynchronous scheduling)
    seq_start_host: list[int]
    # [B] int64 valid (not rejected) rows per request
    num_valid: torch.Tensor
    # host int, the longest query of the step
    max_query_len: int


@dataclass
class _NewRows:
    """The rows one attention call appends after each request's cached prefix."""

    # [B + 1] int64, rows of request b are cu_seqlens[b]:cu_seqlens[b + 1]
    cu_seqlens: torch.Tensor
    # [B] int64, pool slot per request
    slot_ids: torch.Tensor
    # [B] int64, cached rows visible before the new rows
    prefix_lens: torch.Tensor
    # host int, an upper bound of new rows per request (lets the kernel launch sync-free)
    max_rows: int


class TextAnchoredDrafter:
    def __init__(
        self,
        model: SparrowDraftForCausalLM,
        cache: TextKVCache,
        window: int | None,
        visual_rows: VisualRows,
        max_model_len: int,
        max_draft_tokens: int,
    ) -> None:
        self.model = model
        self.cache = cache
        self.window = window
        self.device = cache.k.device
        self.visual_rows = visual_rows
        cache.visual_token_mask = visual_rows.token_mask
        self.max_model_len = max_model_len
        # the configured K: a decode query verifies at most this many drafts (the draft
        # length of a step may be smaller, down to 0, when it is chosen adaptively)
        self.max_draft_tokens = max_draft_tokens
        self.steps = 0  # drafting steps run (engine tests read it to see which path ran)
        self._last_batch: tuple[str, ...] | None = None
        self._last_slot_list: list[int] = []
        self._last_slots = torch.empty(0, dtype=torch.int64, device=self.device)
        self._last_spans: torch.Tensor | None = None  # [B, R, 2] frame-text segments
        self._resumed: set[str] = set()  # preempted requests back, to rewind at their next step

    def step(
        self, inputs: StepInputs, num_tokens: int, sample: SampleFn
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Commit this step's verified text rows and draft `num_tokens` tokens per request.

        Returns drafts [B, K] and, when `sample` gives them, probabilities [B, K, vocab].
        A decode step (at most K + 1 rows per request) runs without host synchronisation,
        also when the batch's requests changed; a prefill chunk reads its row counts back.
        """
        self.steps += 1
        batch = len(inputs.req_ids)
        n_rows = inputs.token_ids.shape[0]
        qsl = inputs.query_start
        qlen = qsl[1:] - qsl[:-1]
        slots = self._slots(inputs)
        self.cache.note_holes(slots, inputs.seq_start)

        # Row i carries token x_{i+1}; each request's sample row carries its next token.
        input_ids = torch.zeros(n_rows, dtype=torch.int64, device=self.device)
        input_ids[: n_rows - 1] = inputs.token_ids[1:n_rows]
        input_ids[inputs.sample_idx] = inputs.next_token_ids.long()

        arange_b = torch.arange(batch, device=self.device)
        row_req = torch.repeat_interleave(arange_b, qlen, output_size=n_rows)
        local = torch.arange(n_rows, device=self.device) - qsl[:-1][row_req]
        is_valid = local < inputs.num_valid[row_req]
        row_seq = inputs.seq_start[row_req] + local
        is_text = self.visual_rows.is_text(input_ids, row_seq + 1, row_req, self._last_spans)
        is_sample = torch.zeros(n_rows, dtype=torch.bool, device=self.device)
        is_sample[inputs.sample_idx] = True
        keep = is_valid & (is_text | is_sample)
        counts = torch.zeros(batch, dtype=torch.int64, device=self.device)
        counts.scatter_add_(0, row_req, keep.long())

        if inputs.max_query_len <= self.max_draft_tokens + 1:
            # decode: all rows, kept ones first (grouped by request), no host sync; each
            # request commits at most max_query_len rows
            order = torch.argsort((~keep).long() * batch + row_req, stable=True)
            new_rows = [inputs.max_query_len] * batch
        else:
            # prefill chunk: only the kept rows (visual rows cost nothing further); this
            # synchronises anyway, so read the exact row counts with it
            order = torch.nonzero(keep).squeeze(1)
            lengths, new_rows = torch.stack((self.cache.lengths[slots], counts)).tolist()
            self.cache.sync(self._last_slot_list, lengths)
        self.cache.reserve(self._last_slot_list, new_rows, max(num_tokens - 1, 0),
                           set(inputs.req_ids))
        rows = _NewRows(_cumsum0(counts), slots, self.cache.lengths[slots], inputs.max_query_len)
        records: list[tuple[torch.Tensor, torch.Tensor]] = []
        out = self.model(
            self.model.embed_input_ids(input_ids[order]),
            inputs.hidden_states[order],
            inputs.positions[order].long(),
            self._attend_fn(rows, records, self.cache.visible_rows_bound(self._last_slot_list, 0)),
        )
        commit = (keep & is_text)[order]
        self._commit(records, rows, row_req[order], commit, row_seq[order], input_ids[order])
        self.cache.next_seq[slots] = inputs.seq_start + inputs.num_valid
        self.cache.after_write()

        if num_tokens == 0:  # the draft-length policy chose K = 0: rows committed, no chain
            return torch.empty(batch, 0, dtype=torch.int64, device=self.device), None
        # The sample row is the last kept row of each request.
        hidden = out[rows.cu_seqlens[1:] - 1]
        pos = inputs.positions[inputs.sample_idx].long()
        return self._draft_chain(hidden, pos, slots, num_tokens, sample,
                                 self.cache.visible_rows_bound(self._last_slot_list, num_tokens))

    def release(self, req_id: str) -> None:
        self.cache.release(req_id)
        self.visual_rows.release(req_id)
        self._last_batch = None

    def on_requests_added(self, contents: dict[str, RequestContent]) -> None:
        """New requests' prompts (their rows can then be reused by later requests)."""
        for req_id, content in contents.items():
            self.cache.register_content(req_id, content)
            self.visual_rows.add_request(req_id, content.prompt_token_ids)

    def on_requests_preempted(self, req_ids: set[str]) -> None:
        """Requests vLLM preempted and will resume (V1): their rows go first when the
        draft cache runs out of blocks or slots."""
        self.cache.pause(req_ids)

    def on_requests_resumed(self, req_ids: set[str]) -> None:
        """Preempted requests are back (to be recomputed): rewind them next step."""
        self._resumed |= req_ids

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
        rows = _NewRows(torch.tensor([0, num_rows], device=self.device), zero, zero, num_rows)
        self.model(zeros, zeros, torch.arange(num_rows, device=self.device),
                   self._attend_fn(rows, None, 0))

    # ---- internals ----------------------------------------------------------------------

    def _slots(self, inputs: StepInputs) -> torch.Tensor:
        """[B] pool slots. Host bookkeeping (allocation, rewind after recompute) runs only
        when the batch's requests differ from the previous step's, and reads nothing back."""
        key = tuple(inputs.req_ids)
        if key == self._last_batch and not self._resumed:
            return self._last_slots
        resumed = self._resumed & set(key)
        self._resumed -= resumed
        self._last_slot_list, self._last_slots = self.cache.prepare_batch(
            key, inputs.seq_start, inputs.seq_start_host, resumed)
        self._last_batch = key
        self._last_spans = self.visual_rows.batch_spans(key)
        return self._last_slots

    def _commit(
        self,
        records: list[tuple[torch.Tensor, torch.Tensor]],
        rows: _NewRows,
        # [R] request of each row
        req: torch.Tensor,
        # [R] bool, the row is a verified text row (kept rows come first per request)
        commit: torch.Tensor,
        # [R] target sequence index of each row
        seq: torch.Tensor,
        # [R] input token of each row
        tokens: torch.Tensor,
    ) -> None:
        """Write committed rows to their cells, the others to the trash block."""
        cache = self.cache
        block, offset, n_commit = commit_targets(
            cache.block_table, rows.slot_ids, rows.prefix_lens, cache.first_row[rows.slot_ids],
            req, commit, cache.block_size, cache.trash_block,
        )
        for layer, (k_new, v_new) in enumerate(records):
            cache.k[layer, block, offset] = k_new
            cache.v[layer, block, offset] = v_new
        cache.row_seq[block, offset] = seq
        cache.row_token[block, offset] = tokens
        cache.lengths.scatter_add_(0, rows.slot_ids, n_commit)

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
        # host: an upper bound of the cached rows any chain row sees
        visible_rows: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch = hidden.shape[0]
        tokens, probs = sample(hidden)
        drafted, drafted_probs = [tokens], [probs]
        if num_tokens > 1:
            # every chain step's rows, positions and scratch cells, computed once:
            # step s (1..K-1) adds absolute row committed + s - 1 at position pos + s
            one_each = torch.arange(batch + 1, device=self.device)
            later = torch.arange(num_tokens - 1, device=self.device)[:, None]  # [K - 1, 1]
            prefixes = self.cache.lengths[slots] + later  # [K - 1, B]
            positions = torch.clamp(pos + 1 + later, max=self.max_model_len - 1)
            blocks, offsets = scratch_cells(self.cache.block_table, slots, prefixes,
                                            self.cache.first_row[slots], self.cache.block_size,
                                            self.cache.trash_block)
        for step in range(1, num_tokens):
            rows = _NewRows(one_each, slots, prefixes[step - 1], 1)
            records: list[tuple[torch.Tensor, torch.Tensor]] = []
            hidden = self.model(
                self.model.embed_input_ids(tokens),
                hidden,
                positions[step - 1],
                self._attend_fn(rows, records, visible_rows),
            )
            block, offset = blocks[step - 1], offsets[step - 1]
            for layer, (k_new, v_new) in enumerate(records):
                self.cache.k[layer, block, offset] = k_new
                self.cache.v[layer, block, offset] = v_new
            tokens, probs = sample(hidden)
            drafted.append(tokens)
            drafted_probs.append(probs)
        stacked_probs = None
        if all(p is not None for p in drafted_probs):
            stacked_probs = torch.stack(drafted_probs, dim=1).contiguous()
        return torch.stack(drafted, dim=1), stacked_probs

    def _attend_fn(
        self, rows: _NewRows, record: list[tuple[torch.Tensor, torch.Tensor]] | None,
        # host: an upper bound of the cached rows any of these rows sees
        visible_rows: int,
    ) -> AttentionFn:
        cache = self.cache
        window = self.window
        # the same for every layer of this forward: read once, and the reference backend's
        # gather indices and mask planned once (on the first layer, whose q gives the rows)
        first_rows = cache.first_row[rows.slot_ids]
        plan: list[TextWindowPlan | None] = []

        def attend(layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            if record is not None:
                record.append((k, v))
            if not plan:
                plan.append(plan_attention(q.device, rows.cu_seqlens, cache.block_table, rows.slot_ids,
                                           rows.prefix_lens, first_rows, window, cache.block_size,
                                           q.shape[0], max_cached=visible_rows, max_new=rows.max_rows))
            return text_window_attention(
                q, k, v, rows.cu_seqlens, cache.k[layer_idx], cache.v[layer_idx],
                cache.block_table, rows.slot_ids, rows.prefix_lens, first_rows,
                window=window, max_new_rows=rows.max_rows, plan=plan[0],
            )

        return attend


def commit_targets(
    # [num_slots + 1, M] physical block of each table column
    block_table: torch.Tensor,
    # [B] table row (slot) of each request
    slot_ids: torch.Tensor,
    # [B] rows each request committed before this write
    prefix_lens: torch.Tensor,
    # [B] first absolute row each request still caches (after this step's allocation)
    first_rows: torch.Tensor,
    # [R] request of each row
    req: torch.Tensor,
    # [R] bool, the row is committed (a request's committed rows in sequence order)
    commit: torch.Tensor,
    block_size: int,
    trash_block: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where one write stores each row: (block [R], offset [R], committed rows per
    request [B]). The k-th committed row of request b this step is absolute row
    prefix_lens[b] + k. Rows below the request's first cached row (given up when blocks ran
    out) go to the trash block like uncommitted rows. The allocator backs every row from
    first_rows[b] up with a distinct block and spans fewer than M columns, so no two rows
    of one write land in the same cell of a real block (an indexed store with duplicate
    indices leaves the winner undefined on CUDA)."""
    n_commit = torch.zeros_like(prefix_lens)
    n_commit.scatter_add_(0, req, commit.long())
    # absolute row = cached rows + rank among this request's committed rows
    rank = torch.cumsum(commit.long(), 0) - 1 - _cumsum0(n_commit)[:-1][req]
    row = prefix_lens[req] + rank
    stored = commit & (row >= first_rows[req])
    block, offset = _cells(block_table, slot_ids[req], row, stored, block_size, trash_block)
    return block, offset, n_commit


def scratch_cells(
    # [num_slots + 1, M]
    block_table: torch.Tensor,
    # [B] slot of each request
    slot_ids: torch.Tensor,
    # [B] (or [steps, B]) absolute row of each request's scratch row
    rows: torch.Tensor,
    # [B] first cached row of each request
    first_rows: torch.Tensor,
    block_size: int,
    trash_block: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # ([B] block, [B] offset)
    """Cells of one draft-chain row per request, or of `steps` rows (trash for rows given up)."""
    return _cells(block_table, slot_ids, rows, rows >= first_rows, block_size, trash_block)


def _cells(
    block_table: torch.Tensor, slots: torch.Tensor, rows: torch.Tensor, stored: torch.Tensor,
    block_size: int, trash_block: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(block, offset) of absolute `rows` of `slots`; (trash_block, 0) where not `stored`."""
    rows = rows.clamp(min=0)
    block = block_table[slots, (rows // block_size) % block_table.shape[1]].long()
    block = torch.where(stored, block, trash_block)
    return block, torch.where(stored, rows % block_size, 0)


def _cumsum0(x: torch.Tensor) -> torch.Tensor:
    """[n] -> [n + 1] exclusive prefix sum starting at 0."""
    return torch.nn.functional.pad(torch.cumsum(x, 0), (1, 0))
