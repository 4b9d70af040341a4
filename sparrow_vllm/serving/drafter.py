"""TextAnchoredDrafter: the Sparrow drafting step, independent of vLLM's runner.

One step, for the rows the target verified (EAGLE pairing, row i = (x_{i+1}, h_i)):
  1. keep valid rows (not rejected) whose input token is text, or a visual token the
     draft's visual budget keeps (VisualRows), plus each request's sample row (its last
     valid row, which carries the next token);
  2. run the draft on them, attending over the request's cached rows (only the last
     W with a window) and causally among themselves;
  3. commit those rows' K/V to the paged TextKVCache (other visual rows never enter it;
     the host backs the rows with blocks before the write, from host-known bounds);
  4. draft a chain of K tokens from the sample rows; chain rows are scratch.

(One job, the step, in its host part and its device part, which torch.compile captures
whole: why this file runs a little past 400 lines. Where rows go and how they are written
is the cache's device layout's: TextCacheLayout.commit_rows, scratch_cells and write_rows
(text_cache_layout.py); the attention op is attention_op.py.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sparrow_vllm.draft.model import AttentionFn
from sparrow_vllm.kernels.reference import TextWindowPlan, plan_text_window
from sparrow_vllm.serving import attention_op
from sparrow_vllm.serving.attention import select_backend
from sparrow_vllm.serving.sync_debug import on_decode_steps
from sparrow_vllm.serving.text_cache_layout import cumsum0
from sparrow_vllm.serving.text_kv_cache import TextKVCache
from sparrow_vllm.serving.text_row_reuse import RequestContent
from sparrow_vllm.serving.visual_rows import VisualRows
from sparrow_vllm.serving.vllm.draft_architecture import SparrowDraftForCausalLM

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
    # every request has exactly max_rows rows, in order (the draft chain's one row each)
    dense: bool = False


@dataclass
class _Selection:
    """A step's rows as the draft sees them."""

    # [N] input token of each row (row i carries x_{i+1}; sample rows the next token)
    input_ids: torch.Tensor
    # [N] request of each row
    row_req: torch.Tensor
    # [N] target sequence index of each row
    row_seq: torch.Tensor
    # [N] bool, the draft runs on the row (valid and committed, or a sample row)
    keep: torch.Tensor
    # [N] bool, the row's input token is text or a visual token the budget keeps
    is_committed: torch.Tensor
    # [B] kept rows per request
    counts: torch.Tensor


class TextAnchoredDrafter:
    def __init__(
        self,
        model: SparrowDraftForCausalLM,
        cache: TextKVCache,
        window: int | None,
        visual_rows: VisualRows,
        max_model_len: int,
        num_speculative_tokens: int,
        compile_backend: str | None = None,
    ) -> None:
        """`compile_backend`: torch.compile backend of the draft forward (vLLM's own, e.g.
        "inductor"), None to run it eagerly (vLLM's compilation mode NONE, enforce-eager)."""
        self.model = model
        self.cache = cache
        self.window = window
        self.device = cache.device
        self.visual_rows = visual_rows
        cache.visual_token_mask = visual_rows.token_mask
        self.max_model_len = max_model_len
        # the configured K: a decode query verifies at most this many drafts (the draft
        # length of a step may be smaller, down to 0, when it is chosen adaptively)
        self.num_speculative_tokens = num_speculative_tokens
        self.steps = 0  # drafting steps run (engine tests read it to see which path ran)
        self._last_batch: tuple[str, ...] | None = None
        self._last_slot_list: list[int] = []
        self._last_slots = torch.empty(0, dtype=torch.int64, device=self.device)
        self._last_spans: torch.Tensor | None = None  # [B, R, 3] (start, end, kept) segments
        self._resumed: set[str] = set()  # preempted requests back, to rewind at their next step
        self.attention_backend = select_backend(self.device)
        self.compile_backend = compile_backend
        self._forward = self._forward_eager
        self._compiled_decode_shapes = False
        if compile_backend is not None:
            # shapes change with the batch and the rows kept: compiled dynamically; the
            # cache's buffers never change shape (no size of theirs becomes a symbol)
            layout = cache.layout
            for buffer in (layout.k, layout.v, layout.block_table, layout.first_row, layout.lengths):
                torch._dynamo.mark_static(buffer)
            self._forward = torch.compile(self._forward_eager, backend=compile_backend, dynamic=True)

    @torch.no_grad()
    @on_decode_steps  # CUDA's sync-debug mode when SPARROW_SYNC_DEBUG asks (gpu_check)
    def step(
        self, inputs: StepInputs, num_draft_tokens: int, sample: SampleFn
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Commit this step's verified rows (text, and visual rows the draft's budget keeps) and
        draft `num_draft_tokens` tokens per request.

        Returns drafts [B, K] and, when `sample` gives them, probabilities [B, K, vocab].
        A decode step (at most K + 1 rows per request) runs without host synchronisation,
        also when the batch's requests changed: host bookkeeping from host-known bounds,
        then `decode_step` (device work only). A prefill chunk reads its row counts back.
        """
        self.steps += 1
        slots = self._slots(inputs)
        active = set(inputs.req_ids)
        if inputs.max_query_len <= self.num_speculative_tokens + 1:
            # each request commits at most max_query_len rows
            self.cache.reserve(self._last_slot_list, [inputs.max_query_len] * len(inputs.req_ids),
                               max(num_draft_tokens - 1, 0), active)
            drafts = self.decode_step(inputs, slots, num_draft_tokens, sample, *self._visible_rows(num_draft_tokens))
        else:
            drafts = self._prefill_step(inputs, slots, num_draft_tokens, sample, active)
        self.cache.after_write()
        return drafts

    def decode_step(
        self,
        inputs: StepInputs,
        # [B] pool slots
        slots: torch.Tensor,
        num_draft_tokens: int,
        sample: SampleFn,
        # host: upper bounds of the cached rows the step's rows, and its chain rows, see
        visible_rows: int,
        visible_chain_rows: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The device work of a decode step, once the cache has backed its rows: no host
        bookkeeping and no read of the device (torch.compile captures it whole)."""
        sel = self._select(inputs, slots)
        # all rows, kept ones first (grouped by request)
        order = torch.argsort((~sel.keep).long() * len(inputs.req_ids) + sel.row_req, stable=True)
        return self._write_and_draft(inputs, slots, sel, order, inputs.max_query_len, num_draft_tokens, sample,
                                     visible_rows, visible_chain_rows)

    def _prefill_step(
        self, inputs: StepInputs, slots: torch.Tensor, num_draft_tokens: int, sample: SampleFn, active: set[str]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        sel = self._select(inputs, slots)
        # only the kept rows (other visual rows cost nothing further); this synchronises anyway,
        # so read the exact row counts with it
        order = torch.nonzero(sel.keep).squeeze(1)
        lengths, new_rows = torch.stack((self.cache.layout.lengths[slots], sel.counts)).tolist()
        self.cache.sync(self._last_slot_list, lengths)
        self.cache.reserve(self._last_slot_list, new_rows, max(num_draft_tokens - 1, 0), active)
        # the attention pads each request to the most rows one keeps (a 25k-token chunk of
        # video keeps a handful), never to the chunk's length
        return self._write_and_draft(inputs, slots, sel, order, max(1, *new_rows), num_draft_tokens, sample,
                                     *self._visible_rows(num_draft_tokens))

    def _visible_rows(self, num_draft_tokens: int) -> tuple[int, int]:
        """Host bounds of the cached rows a step's rows and its chain rows see."""
        # at least 2: torch.compile specialises the values 0 and 1 (a graph each)
        rows, chain_rows = self.cache.visible_rows_bounds(self._last_slot_list, (0, num_draft_tokens))
        return max(2, rows), max(2, chain_rows)

    def _select(self, inputs: StepInputs, slots: torch.Tensor) -> _Selection:
        """Which of the step's rows the draft runs on and which it commits."""
        batch = len(inputs.req_ids)
        n_rows = inputs.token_ids.shape[0]
        qsl = inputs.query_start
        self.cache.layout.note_holes(slots, inputs.seq_start)
        # Row i carries token x_{i+1}; each request's sample row carries its next token.
        input_ids = torch.zeros(n_rows, dtype=torch.int64, device=self.device)
        input_ids[: n_rows - 1] = inputs.token_ids[1:n_rows]
        input_ids[inputs.sample_idx] = inputs.next_token_ids.long()

        arange_b = torch.arange(batch, device=self.device)
        row_req = torch.repeat_interleave(arange_b, qsl[1:] - qsl[:-1], output_size=n_rows)
        local = torch.arange(n_rows, device=self.device) - qsl[:-1][row_req]
        is_valid = local < inputs.num_valid[row_req]
        row_seq = inputs.seq_start[row_req] + local
        is_committed = self.visual_rows.is_committed(input_ids, row_seq + 1, row_req, self._last_spans)
        is_sample = torch.zeros(n_rows, dtype=torch.bool, device=self.device)
        is_sample[inputs.sample_idx] = True
        keep = is_valid & (is_committed | is_sample)
        counts = torch.zeros(batch, dtype=torch.int64, device=self.device)
        counts.scatter_add_(0, row_req, keep.long())
        return _Selection(input_ids, row_req, row_seq, keep, is_committed, counts)

    def _write_and_draft(
        self,
        inputs: StepInputs,
        slots: torch.Tensor,
        sel: _Selection,
        # [R] the rows the draft runs on, kept ones first, grouped by request
        order: torch.Tensor,
        # host: an upper bound of the rows kept per request
        max_rows: int,
        num_draft_tokens: int,
        sample: SampleFn,
        visible_rows: int,
        visible_chain_rows: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch = len(inputs.req_ids)
        rows = _NewRows(cumsum0(sel.counts), slots, self.cache.layout.lengths[slots], max_rows)
        out, records = self._forward(
            self.model.embed_input_ids(sel.input_ids[order]),
            inputs.hidden_states[order],
            inputs.positions[order].long(),
            rows,
            visible_rows,
        )
        commit = (sel.keep & sel.is_committed)[order]
        self.cache.layout.commit_rows(records, rows.slot_ids, rows.prefix_lens, sel.row_req[order], commit,
                                      sel.row_seq[order], sel.input_ids[order])
        self.cache.layout.expect_next(slots, inputs.seq_start + inputs.num_valid)

        if num_draft_tokens == 0:  # the draft-length policy chose K = 0: rows committed, no chain
            return torch.empty(batch, 0, dtype=torch.int64, device=self.device), None
        # The sample row is the last kept row of each request.
        hidden = out[rows.cu_seqlens[1:] - 1]
        pos = inputs.positions[inputs.sample_idx].long()
        return self._draft_chain(hidden, pos, slots, num_draft_tokens, sample, visible_chain_rows)

    def _forward_eager(
        self,
        # [R, H] input embeddings of the rows
        embeds: torch.Tensor,
        # [R, H] target features of the rows
        hidden: torch.Tensor,
        # [R] int64 positions
        positions: torch.Tensor,
        rows: _NewRows,
        visible_rows: int,
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The draft over `rows`: its output [R, H] and each layer's new (k, v)."""
        records: list[tuple[torch.Tensor, torch.Tensor]] = []
        out = self.model(embeds, hidden, positions, self._attend_fn(rows, records, visible_rows))
        return out, records

    def release(self, req_id: str) -> None:
        self.cache.release(req_id)
        self.visual_rows.release(req_id)
        self.forget_batch()

    def forget_batch(self) -> None:
        """The next step redoes its batch's host bookkeeping (slots, visual spans) even when
        its requests are the previous step's: for a caller that changed the cache itself."""
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

    @torch.no_grad()
    def warm_up(self, num_rows: int, hidden_size: int, dtype: torch.dtype) -> None:
        """The draft over `num_rows` rows with no cache (warm-up and memory profiling).
        A compiled forward also compiles, once, the shape families of decode steps (one
        and several requests, K + 1 rows each over cached rows; the chain's one row each),
        so that serving does not compile them on its first requests."""
        shapes = [(1, num_rows, False)]
        if self.compile_backend is not None and not self._compiled_decode_shapes:
            self._compiled_decode_shapes = True
            # a graph per family: one request or several (torch.compile specialises a
            # size of 1), K + 1 rows or one row each (the latter dense in the chain)
            shapes += [(batch, per_request, dense) for batch in (1, 3)
                       for per_request, dense in ((self.num_speculative_tokens + 1, False), (1, False), (1, True))]
        for batch, per_request, dense in shapes:
            n = batch * per_request
            zeros = torch.zeros(n, hidden_size, dtype=dtype, device=self.device)
            # distinct tensors wherever serving passes distinct ones (dynamo guards aliasing)
            slots, prefixes = (torch.zeros(batch, dtype=torch.int64, device=self.device) for _ in range(2))
            starts = torch.arange(0, n + 1, per_request, device=self.device)
            self._forward(zeros, torch.zeros_like(zeros), torch.arange(n, device=self.device),
                          _NewRows(starts, slots, prefixes, per_request, dense), 2 * self.cache.block_size)

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

    def _draft_chain(
        self,
        # [B, H] draft output at each request's sample row
        hidden: torch.Tensor,
        # [B] position of the sample row
        pos: torch.Tensor,
        # [B] pool slots
        slots: torch.Tensor,
        num_draft_tokens: int,
        sample: SampleFn,
        # host: an upper bound of the cached rows any chain row sees
        visible_rows: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch = hidden.shape[0]
        tokens, probs = sample(hidden)
        drafted, drafted_probs = [tokens], [probs]
        if num_draft_tokens > 1:
            # every chain step's rows, positions and scratch cells, computed once:
            # step s (1..K-1) adds absolute row committed + s - 1 at position pos + s
            one_each = torch.arange(batch + 1, device=self.device)
            later = torch.arange(num_draft_tokens - 1, device=self.device)[:, None]  # [K - 1, 1]
            prefixes = self.cache.layout.lengths[slots] + later  # [K - 1, B]
            positions = torch.clamp(pos + 1 + later, max=self.max_model_len - 1)
            blocks, offsets = self.cache.layout.scratch_cells(slots, prefixes)
        for step in range(1, num_draft_tokens):
            rows = _NewRows(one_each, slots, prefixes[step - 1], 1, dense=True)
            hidden, records = self._forward(
                self.model.embed_input_ids(tokens), hidden, positions[step - 1], rows, visible_rows)
            self.cache.layout.write_rows(records, blocks[step - 1], offsets[step - 1])
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
        layout = self.cache.layout
        window = self.window
        backend = self.attention_backend
        # the same for every layer of this forward: read once, and the reference backend's
        # gather indices and mask planned once (on the first layer, whose q gives the rows)
        # from host bounds, so nothing is read back
        first_rows = layout.first_row[rows.slot_ids]
        plan: list[TextWindowPlan | None] = []

        def attend(layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            if record is not None:
                record.append((k, v))
            if not plan:
                plan.append(None if backend != "reference" else plan_text_window(
                    rows.cu_seqlens, layout.block_table, rows.slot_ids, rows.prefix_lens, first_rows,
                    window, layout.block_size, q.shape[0], visible_rows, rows.max_rows, rows.dense))
            return attention_op.attend(
                q, k, v, rows.cu_seqlens, layout.k[layer_idx], layout.v[layer_idx],
                layout.block_table, rows.slot_ids, rows.prefix_lens, first_rows,
                window, backend, rows.max_rows, plan[0],
            )

        return attend
