"""TextAnchoredDrafter with a fake runner: commit / reject / window / free / recompute.

The sacred rule checked here: however the target's rows arrive (prefill chunks, decode
steps with rejected drafts, visual rows mixed in, recompute), the draft's output at the
sample row equals one forward pass of the same network over the sequence's text rows with
the training attention rule.
"""

from __future__ import annotations

import pytest
import torch

from sparrow_vllm.modeling.draft_model import SparrowDraftModel
from sparrow_vllm.serving.drafter import StepInputs, TextAnchoredDrafter, commit_targets
from sparrow_vllm.serving.text_kv_cache import TextKVCache
from sparrow_vllm.serving.vllm_draft import SparrowDraftForCausalLM
from sparrow_vllm.training.attention import causal_text_attention
from tests.unit.helpers import layer_config, sparrow_config

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


def _drafter(model, window=None, slots=4, k=3):
    capacity = (window if window is not None else 256) + k + 1
    cache = TextKVCache(model.draft.layer_config.num_hidden_layers, slots, capacity, 2, 8,
                        torch.float32, "cpu")
    return TextAnchoredDrafter(model, cache, window, [VISUAL], max_model_len=512)


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
        num_valid=torch.tensor(valid),
        max_query_len=max(p[3] for p in parts),
    )


def _step(drafter, parts, k=3):
    captured = {}

    def sample(hidden):
        captured.setdefault("first", hidden.clone())
        return drafter.model.compute_logits(hidden).argmax(-1), None

    drafts, _ = drafter.step(_inputs(parts), k, sample)
    return drafts, captured["first"]


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
def test_chunks_rejections_and_visual_rows_match_one_pass(window):
    model = _draft(window)
    drafter = _drafter(model, window)
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


def test_window_keeps_cache_bounded():
    drafter = _drafter(_draft(window=4), window=4)
    a = Sequence(60)
    _step(drafter, [("a", a, 0, 50, 50)])
    assert drafter.cached_rows()["a"]["seq"] == list(range(50 - drafter.cache.capacity, 50))


def test_one_write_never_stores_two_rows_in_one_cell():
    """A prefill chunk with more text rows than the ring holds: only the request's last
    `capacity` committed rows go to its slot, each to its own cell (the rest to trash), so
    the result does not depend on which duplicate write a backend keeps."""
    capacity, trash = 8, 9
    # request 0: 13 rows, two of them not committed (visual); request 1: 3 rows
    commit = torch.tensor([True] * 5 + [False] * 2 + [True] * 6 + [True] * 3)
    req = torch.tensor([0] * 13 + [1] * 3)
    slot, ring, n_commit = commit_targets(torch.tensor([2, 5]), torch.tensor([5, 2]), req, commit,
                                          capacity, trash)
    assert n_commit.tolist() == [11, 3]
    stored = slot != trash
    cells = list(zip(slot[stored].tolist(), ring[stored].tolist(), strict=True))
    assert len(cells) == len(set(cells)) == capacity + 3
    # request 0 keeps its committed rows 3..10 (absolute rows 8..15), in ring order
    rows_0 = torch.nonzero(commit[:13]).flatten()[3:]
    assert torch.equal(torch.nonzero(stored[:13]).flatten(), rows_0)
    assert ring[rows_0].tolist() == [a % capacity for a in range(5 + 3, 5 + 11)]
    assert slot[13:].tolist() == [5, 5, 5] and ring[13:].tolist() == [2, 3, 4]


def test_finished_request_frees_its_slot():
    drafter = _drafter(_draft(), slots=2)
    a, b, c = Sequence(20, seed=1), Sequence(20, seed=2), Sequence(20, seed=3)
    _step(drafter, [("a", a, 0, 5, 5), ("b", b, 0, 5, 5)])
    slot_a = drafter.cache.slot_of("a")
    drafter.release("a")
    assert "a" not in drafter.cached_rows()
    _step(drafter, [("c", c, 0, 5, 5)])
    assert drafter.cache.slot_of("c") == slot_a
    assert drafter.cached_rows()["c"]["seq"] == list(range(5))


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
    _step(drafter, [("r1", seqs[1], 4, 1, 1), ("r2", seqs[2], 0, 4, 4)])  # r0 paused
    assert set(drafter.cached_rows()) == {"r1", "r2"}


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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_decode_step_does_not_synchronise():
    model = _draft().cuda()
    model.own_embedding, model.own_lm_head = model.own_embedding.cuda(), model.own_lm_head.cuda()
    cache = TextKVCache(2, 4, 64, 2, 8, torch.float32, "cuda")
    drafter = TextAnchoredDrafter(model, cache, None, [VISUAL], max_model_len=512)
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
