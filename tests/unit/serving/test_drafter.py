"""TextAnchoredDrafter with a fake runner: commit / reject / window / free / recompute.

The sacred rule checked here: however the target's rows arrive (prefill chunks, decode
steps with rejected drafts, visual rows mixed in, recompute), the draft's output at the
sample row equals one forward pass of the same network over the sequence's text rows with
the training attention rule.
"""

from __future__ import annotations

import pytest
import torch

from sparrow_vllm.draft.model import SparrowDraftModel
from sparrow_vllm.serving.drafter import StepInputs, TextAnchoredDrafter
from sparrow_vllm.serving.text_cache_layout import commit_targets
from sparrow_vllm.serving.text_kv_cache import TextKVCache
from sparrow_vllm.serving.visual_rows import VisualRows
from sparrow_vllm.serving.vllm.draft_architecture import SparrowDraftForCausalLM
from sparrow_vllm.training.attention import causal_text_attention
from tests.unit.helpers import LoggerRecords, layer_config, sparrow_config, vl_family

VOCAB, HIDDEN, VISUAL = 64, 32, 60


def _draft(window=None, layers=2):
    torch.manual_seed(0)
    model = SparrowDraftForCausalLM()
    model.draft = SparrowDraftModel(
        layer_config(num_hidden_layers=layers), sparrow_config(num_layers=layers, window=window)
    )
    model.own_embedding = torch.randn(VOCAB, HIDDEN)
    model.own_lm_head = torch.randn(VOCAB, HIDDEN)
    return model


def _drafter(model, window=None, slots=4, k=3, blocks=64, block_size=4, drift_steps=0, compile_backend=None,
             visual_budget="none"):
    """drift_steps: table slack for the host's bound running ahead (serving has DRIFT_STEPS)."""
    rows = (window if window is not None else 256) + 2 * k + 1 + drift_steps * (k + 1)
    cache = TextKVCache(model.draft.layer_config.num_hidden_layers, blocks, block_size, slots,
                        -(-rows // block_size) + 1, 2, 8, torch.float32, "cpu", window=window)
    return TextAnchoredDrafter(model, cache, window, _visual_rows(visual_budget=visual_budget), max_model_len=512,
                               num_speculative_tokens=k, compile_backend=compile_backend)


def _visual_rows(family=None, frame_text="visual", device="cpu", visual_budget="none"):
    return VisualRows(family or vl_family(VISUAL), frame_text, torch.device(device), visual_budget=visual_budget)


class Sequence:
    """One request's token ids and target features; x[i] at position i."""

    def __init__(self, n, visual=(), seed=1):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(0, 50, (n,), generator=g)
        for s, e in visual:
            self.x[s:e] = VISUAL
        self.h = torch.randn(n, HIDDEN, generator=g)


def _inputs(parts):
    """parts: list of (req_id, seq, start, n_query, n_valid) -> StepInputs."""
    ids, pos, hid, nxt, sample, qs, starts, valid = [], [], [], [], [], [0], [], []
    for _, seq, s, nq, nv in parts:
        tokens = seq.x[s : s + nq].clone()
        hidden = seq.h[s : s + nq].clone()
        tokens[nv:] = 7  # rejected rows carry drafts the target did not accept
        hidden[nv:] = 99.0
        ids.append(tokens)
        hid.append(hidden)
        pos.append(torch.arange(s, s + nq))
        nxt.append(int(seq.x[s + nv]))
        sample.append(qs[-1] + nv - 1)
        qs.append(qs[-1] + nq)
        starts.append(s)
        valid.append(nv)
    return StepInputs(
        req_ids=[p[0] for p in parts],
        token_ids=torch.cat(ids),
        positions=torch.cat(pos),
        hidden_states=torch.cat(hid),
        next_token_ids=torch.tensor(nxt),
        sample_idx=torch.tensor(sample),
        query_start=torch.tensor(qs),
        seq_start=torch.tensor(starts),
        seq_start_host=list(starts),
        num_valid=torch.tensor(valid),
        max_query_len=max(p[3] for p in parts),
    )


def apply_event(drafter, event, payload) -> bool:
    """A request life-cycle event of a scripted stream ("add", "release", "preempt",
    "resume") applied to `drafter`; False for a "step" (the caller runs it)."""
    if event == "step":
        return False
    handlers = {"add": drafter.on_requests_added, "release": drafter.release,
                "preempt": drafter.on_requests_preempted, "resume": drafter.on_requests_resumed}
    handlers[event](payload)
    return True


def _step(drafter, parts, k=3):
    captured = {}

    def sample(hidden):
        captured.setdefault("first", hidden.clone())
        return drafter.model.compute_logits(hidden).argmax(-1), None

    drafts, _ = drafter.step(_inputs(parts), k, sample)
    return drafts, captured.get("first")  # no sample row output when k = 0


def _one_shot(model, seq, end, window):
    """Sample-row output for a prefix ending at row end-1, from one training-style pass."""
    rows = [i for i in range(end) if seq.x[i + 1] != VISUAL or i == end - 1]
    n = len(rows)
    out = model(
        model.embed_input_ids(seq.x[[i + 1 for i in rows]]),
        seq.h[rows],
        torch.tensor(rows),
        causal_text_attention(1, n, window),
    )
    return out[-1]


@pytest.mark.parametrize("window", [None, 1, 4])
@pytest.mark.parametrize("block_size", [1, 4, 16])
@pytest.mark.parametrize("exact_lengths", [True, False])
def test_chunks_rejections_and_visual_rows_match_one_pass(window, block_size, exact_lengths, monkeypatch):
    """exact_lengths=False: the host never sees the device's row counts between prefill
    steps (a CUDA copy that has not landed) and allocates from its upper bound alone."""
    model = _draft(window)
    drafter = _drafter(model, window, block_size=block_size)
    if not exact_lengths:
        monkeypatch.setattr(drafter.cache._mirror, "refresh", lambda rows: None)
    a = Sequence(40, visual=[(5, 17)], seed=1)
    b = Sequence(40, seed=2)
    # prefill in chunks (a's second chunk is mostly visual), b joins later
    _step(drafter, [("a", a, 0, 8, 8)])
    _step(drafter, [("a", a, 8, 12, 12), ("b", b, 0, 6, 6)])
    # decode steps: 4 query rows (1 + K drafts) with 1..4 of them valid
    ea, eb = 20, 6
    for nva, nvb in [(2, 4), (1, 1), (4, 3), (3, 2)]:
        _, hidden = _step(drafter, [("a", a, ea, 4, nva), ("b", b, eb, 4, nvb)])
        ea, eb = ea + nva, eb + nvb
        torch.testing.assert_close(hidden[0], _one_shot(model, a, ea, window), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(hidden[1], _one_shot(model, b, eb, window), atol=1e-5, rtol=1e-4)
        _check_cache(drafter.cache)


def _check_cache(cache):
    """Invariants of the paged cache: each physical block belongs to at most one request,
    held + free blocks = the pool, each request's rows [first_row, length) are backed by
    its own blocks, and reading them back gives consecutive target rows."""
    holders = [b for state in cache._rows.values() for b in state.blocks.values()]
    holders += [b for entry in cache._reuse.entries.values() for b in entry.blocks]
    holders += [b for _, state, _, _ in cache._retiring for b in state.blocks.values()]
    for block in range(cache.num_blocks):
        assert cache._refs[block] == holders.count(block), block
    assert sorted(cache._free_blocks) == [b for b in range(cache.num_blocks) if cache._refs[b] == 0]
    for req_id, slot in cache._slot_of.items():
        state = cache._rows[slot]
        first, length = int(cache.layout.first_row[slot]), int(cache.layout.lengths[slot])
        # the host learns of rows note_holes() gave up on the device when its copy lands
        assert state.first_row <= first and state.known_len <= length <= state.upper_len
        # the allocator's bounds of the blocks held, and their order taken
        held = list(state.blocks)
        assert (state.lo, state.hi) == ((min(held), max(held)) if held else (0, -1)), req_id
        assert sorted(held, key=state.taken.__getitem__) == held, req_id
        for row in range(first, length):
            logical = row // cache.block_size
            assert logical in state.blocks, (req_id, row)
            assert int(cache.layout.block_table[slot, logical % cache.table_width]) == state.blocks[logical]
        seq, _ = cache.committed(req_id)
        assert seq == sorted(seq) and len(seq) == max(length - first, 0)


def test_cache_holds_only_text_rows():
    drafter = _drafter(_draft())
    a = Sequence(30, visual=[(3, 20)])
    _step(drafter, [("a", a, 0, 25, 25)])
    rows = drafter.cached_rows()["a"]
    assert VISUAL not in rows["tokens"]
    text_rows = [i for i in range(25) if int(a.x[i + 1]) != VISUAL]
    assert rows["seq"] == text_rows
    assert rows["tokens"] == [int(a.x[i + 1]) for i in text_rows]


def test_rejected_rows_are_not_committed():
    drafter = _drafter(_draft())
    a = Sequence(30)
    _step(drafter, [("a", a, 0, 10, 10)])
    _step(drafter, [("a", a, 10, 4, 2)])
    assert drafter.cached_rows()["a"]["seq"] == list(range(12))


def test_window_returns_blocks_behind_it():
    drafter = _drafter(_draft(window=4), window=4)
    cache = drafter.cache
    a = Sequence(80)
    _step(drafter, [("a", a, 0, 50, 50)])
    end = 50
    for _ in range(8):
        _step(drafter, [("a", a, end, 4, 3)])
        end += 3
        seq = drafter.cached_rows()["a"]["seq"]
        assert seq[-4:] == list(range(end - 4, end))  # the window is always there
        assert cache.blocks_held("a") <= cache.table_width
        _check_cache(cache)
    assert cache.free_blocks >= cache.num_blocks - cache.table_width


def test_one_write_never_stores_two_rows_in_one_cell():
    """A prefill chunk with more text rows than the block table addresses: only the last
    rows are stored, each in its own cell of its own block (the rest go to the trash
    block), so the result does not depend on which duplicate write a backend keeps. Read
    back through the table, the stored rows are exactly the last ones."""
    drafter = _drafter(_draft(window=4), window=4, block_size=4)
    cache = drafter.cache
    a = Sequence(60)
    _step(drafter, [("a", a, 0, 50, 50)])
    seq = drafter.cached_rows()["a"]["seq"]
    assert seq == list(range(50 - len(seq), 50)) and len(seq) >= 4
    slot = cache.slot_of("a")
    rows = torch.arange(int(cache.layout.first_row[slot]), 50)
    cells = list(zip(cache.layout.block_table[slot, (rows // 4) % cache.table_width].tolist(),
                     (rows % 4).tolist(), strict=True))
    assert len(set(cells)) == len(cells) and cache.layout.trash_block not in {b for b, _ in cells}
    _check_cache(cache)


def test_commit_targets_sends_rows_below_first_row_to_trash():
    table = torch.tensor([[3, 1, 0], [2, 4, 5]], dtype=torch.int32)
    commit = torch.tensor([True, False, True, True, True, True])
    req = torch.tensor([0, 0, 0, 0, 1, 1])
    block, offset, n_commit = commit_targets(
        table, torch.tensor([0, 1]), torch.tensor([2, 5]), torch.tensor([3, 0]), req, commit,
        block_size=2, trash_block=9)
    assert n_commit.tolist() == [3, 2]
    # request 0 commits absolute rows 2, 3, 4: row 2 is below its first row
    assert block.tolist() == [9, 9, 1, 0, 5, 2] and offset.tolist() == [0, 0, 1, 0, 1, 0]


def test_finished_and_aborted_requests_return_their_blocks():
    drafter = _drafter(_draft(), slots=2)
    cache = drafter.cache
    a, b, c = Sequence(40, seed=1), Sequence(40, seed=2), Sequence(20, seed=3)
    _step(drafter, [("a", a, 0, 30, 30), ("b", b, 0, 5, 5)])
    slot_a, held_a, free = cache.slot_of("a"), cache.blocks_held("a"), cache.free_blocks
    assert held_a >= 30 // cache.block_size
    drafter.release("a")
    assert "a" not in drafter.cached_rows() and cache.free_blocks == free + held_a
    _step(drafter, [("c", c, 0, 5, 5)])
    assert cache.slot_of("c") == slot_a
    assert drafter.cached_rows()["c"]["seq"] == list(range(5))
    _check_cache(cache)


def test_out_of_blocks_degrades_drafts_not_the_step():
    """Three requests with long prompts and a pool that holds far fewer rows: every step
    still drafts, each request keeps its newest rows, the pool is never oversubscribed,
    and each starved request is logged once."""
    model = _draft()
    drafter = _drafter(model, slots=4, blocks=12, block_size=4)
    seqs = {r: Sequence(80, seed=i) for i, r in enumerate("abc")}
    with LoggerRecords("sparrow_vllm.serving.text_kv_cache") as records:
        _step(drafter, [(r, s, 0, 30, 30) for r, s in seqs.items()])
        ends = dict.fromkeys(seqs, 30)
        for _ in range(6):
            drafts, _ = _step(drafter, [(r, s, ends[r], 4, 2) for r, s in seqs.items()])
            assert drafts.shape == (3, 3)
            for r in ends:
                ends[r] += 2
            _check_cache(drafter.cache)
    for r in seqs:
        seq = drafter.cached_rows()[r]["seq"]
        assert seq[-1] == ends[r] - 1 and seq == list(range(ends[r] - len(seq), ends[r]))
    starved = [m for m in records.messages if "out of blocks" in m]
    assert starved and len(starved) == len(set(starved)) <= 3
    # the newest rows drive the draft: a starved request's sample row equals one pass over
    # the rows it still has (same positions), as with a window of that length
    seq_a = drafter.cached_rows()["a"]["seq"]
    assert len(seq_a) < ends["a"]


def test_recompute_after_preemption_rewinds():
    model = _draft()
    drafter = _drafter(model)
    a = Sequence(40)
    _step(drafter, [("a", a, 0, 20, 20)])
    _step(drafter, [("a", a, 20, 4, 4)])
    # preempted, then recomputed from row 10 (prefix cache kept rows 0..9); the runner
    # reports resumed requests before the step
    drafter.on_requests_resumed({"a"})
    _, hidden = _step(drafter, [("a", a, 10, 16, 16)])
    assert drafter.cached_rows()["a"]["seq"] == list(range(26))
    torch.testing.assert_close(hidden[0], _one_shot(model, a, 26, None), atol=1e-5, rtol=1e-4)


def test_paused_request_is_evicted_only_when_slots_run_out():
    drafter = _drafter(_draft(), slots=2)
    seqs = [Sequence(10, seed=s) for s in range(3)]
    _step(drafter, [("r0", seqs[0], 0, 4, 4), ("r1", seqs[1], 0, 4, 4)])
    drafter.on_requests_preempted({"r0"})  # what the V1 runner adapter passes on
    _step(drafter, [("r1", seqs[1], 4, 1, 1), ("r2", seqs[2], 0, 4, 4)])
    assert set(drafter.cached_rows()) == {"r1", "r2"}


def test_paused_request_gives_its_blocks_first_when_the_pool_runs_dry():
    drafter = _drafter(_draft(), slots=4, blocks=12, block_size=4)
    seqs = [Sequence(60, seed=s) for s in range(2)]
    _step(drafter, [("r0", seqs[0], 0, 30, 30)])
    drafter.on_requests_preempted({"r0"})
    _step(drafter, [("r1", seqs[1], 0, 30, 30)])  # r1 needs r0's blocks
    assert set(drafter.cached_rows()) == {"r1"}
    assert drafter.cached_rows()["r1"]["seq"] == list(range(30))
    _check_cache(drafter.cache)


def test_unscheduled_live_request_keeps_its_newest_rows_when_the_pool_runs_dry():
    """A running request that vLLM merely did not schedule this step (token budget) is not
    paused: it gives up its oldest blocks like any live request, never all its rows."""
    drafter = _drafter(_draft(), slots=4, blocks=12, block_size=4)
    seqs = [Sequence(60, seed=s) for s in range(2)]
    _step(drafter, [("r0", seqs[0], 0, 30, 30)])
    _step(drafter, [("r1", seqs[1], 0, 30, 30)])  # r0 not scheduled, not preempted
    rows = drafter.cached_rows()
    assert set(rows) == {"r0", "r1"}
    assert rows["r0"]["seq"] and rows["r0"]["seq"][-1] == 29  # its newest rows stay
    assert drafter.cache.stats()["starved_requests"] >= 1
    _check_cache(drafter.cache)


def test_drafts_have_k_columns():
    model = _draft()
    drafter = _drafter(model, k=4)
    a = Sequence(20)
    drafts, _ = _step(drafter, [("a", a, 0, 10, 10)], k=4)
    assert drafts.shape == (1, 4)
    assert drafts.dtype == torch.int64


def test_zero_draft_tokens_still_commits_rows():
    drafter = _drafter(_draft())
    a = Sequence(20)
    drafts, _ = drafter.step(_inputs([("a", a, 0, 10, 10)]), 0, lambda h: (h[:, 0].long(), None))
    assert drafts.shape == (1, 0)
    assert drafter.cached_rows()["a"]["seq"] == list(range(10))


@pytest.mark.parametrize("window", [None, 4])
def test_draft_length_changing_per_step_keeps_the_cache_exact(window):
    """The draft-length policy may pick any K from 0 to the configured one each step: a
    step's query then verifies the previous step's K drafts (1 + K rows) and drafts this
    step's K. K = 0 steps still commit their text rows, so every later sample row equals
    one pass over the sequence's text rows, whatever the history of K."""
    model = _draft(window)
    drafter = _drafter(model, window, k=4)
    a = Sequence(60, visual=[(3, 9)], seed=3)
    b = Sequence(60, seed=4)
    _step(drafter, [("a", a, 0, 12, 12), ("b", b, 0, 5, 5)], k=4)
    ea, eb, prev = 12, 5, 4
    # (K drafted after this step, valid rows of a, of b); a query holds 1 + previous K rows
    for k, nva, nvb in [(0, 3, 5), (0, 1, 1), (2, 1, 1), (4, 2, 3), (0, 5, 1), (1, 1, 1), (3, 2, 1)]:
        drafts, hidden = _step(drafter, [("a", a, ea, 1 + prev, nva), ("b", b, eb, 1 + prev, nvb)], k=k)
        ea, eb, prev = ea + nva, eb + nvb, k
        assert drafts.shape == (2, k)
        if k > 0:
            torch.testing.assert_close(hidden[0], _one_shot(model, a, ea, window), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(hidden[1], _one_shot(model, b, eb, window), atol=1e-5, rtol=1e-4)
        _check_cache(drafter.cache)
    if window is None:
        assert drafter.cached_rows()["a"]["seq"] == [i for i in range(ea) if a.x[i + 1] != VISUAL]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_decode_step_does_not_synchronise():
    model = _draft().cuda()
    model.own_embedding, model.own_lm_head = model.own_embedding.cuda(), model.own_lm_head.cuda()
    cache = TextKVCache(2, 64, 16, 4, 34, 2, 8, torch.float32, "cuda")
    drafter = TextAnchoredDrafter(model, cache, None, _visual_rows(device="cuda"), max_model_len=512, num_speculative_tokens=4)
    a = Sequence(40)

    def cuda_inputs(parts):
        inputs = _inputs(parts)
        for name, value in vars(inputs).items():
            if isinstance(value, torch.Tensor):
                setattr(inputs, name, value.cuda())
        return inputs

    sample = lambda h: (model.compute_logits(h).argmax(-1), None)  # noqa: E731
    drafter.step(cuda_inputs([("a", a, 0, 10, 10)]), 3, sample)  # prefill: may sync
    drafter.step(cuda_inputs([("a", a, 10, 4, 2)]), 3, sample)  # first decode: bookkeeping
    decode = cuda_inputs([("a", a, 12, 4, 3)])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        drafter.step(decode, 3, sample)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_a_step_the_drafter_missed_leaves_no_silent_hole():
    """The runner ran the target for one step without the drafter (V1 does so near
    max_model_len): the rows before the gap are dropped, counted and logged, never read as
    if the sequence were whole."""
    drafter = _drafter(_draft())
    a, b = Sequence(40, seed=1), Sequence(40, seed=2)
    _step(drafter, [("a", a, 0, 10, 10)])
    _step(drafter, [("a", a, 10, 4, 2)])  # rows 0..11 cached
    # target rows 12..13 were verified without the drafter; it sees rows 14.. next
    _step(drafter, [("a", a, 14, 4, 3)])
    assert drafter.cached_rows()["a"]["seq"] == [14, 15, 16]
    _step(drafter, [("a", a, 17, 4, 1), ("b", b, 0, 5, 5)])  # a batch change reads the count
    assert drafter.cache.stats()["holed_requests"] == 1
    assert drafter.cached_rows()["a"]["seq"] == [14, 15, 16, 17]
    _check_cache(drafter.cache)
    # a prefix-cache start is no hole: rows before it were never the drafter's
    _step(drafter, [("a", a, 18, 1, 1), ("b", b, 5, 1, 1), ("c", Sequence(30, seed=3), 12, 6, 6)])
    _step(drafter, [("a", a, 19, 1, 1), ("b", b, 6, 1, 1)])
    assert drafter.cache.stats()["holed_requests"] == 1


def test_a_long_visual_prefill_chunk_pads_attention_to_its_kept_rows(monkeypatch):
    """A 600-row chunk of which 590 rows are visual: the draft attends over the ~10 rows
    it keeps, padded to them, never to the chunk's length (a 25k-token video chunk padded
    to 25k queries took ~20 GB)."""
    from sparrow_vllm.serving import drafter as drafter_module

    planned = []
    plan = drafter_module.plan_text_window

    def recording_plan(*args):
        planned.append(args[-2])  # max_new
        return plan(*args)

    monkeypatch.setattr(drafter_module, "plan_text_window", recording_plan)
    drafter = _drafter(_draft())
    a = Sequence(700, visual=[(5, 595)])
    _step(drafter, [("a", a, 0, 600, 600)])
    assert planned and max(planned) <= 11, planned
