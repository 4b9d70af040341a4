"""A draft's visual budget at serving: which visual rows the drafter commits (VisualRows on
the device against the host rule of draft/visual_budget.py), chunk-invariance of the
committed rows and their K/V, and prefix reuse of a request's kept visual rows."""

from __future__ import annotations

import pytest
import torch
from sparrow_vllm.kernels.reference import paged_cells

from sparrow_vllm.draft.visual_budget import kept_token_mask
from sparrow_vllm.serving.text_row_reuse import RequestContent
from tests.unit.families.test_families import frames, qwen3
from tests.unit.helpers import vl_family
from tests.unit.serving.test_drafter import (
    VISUAL,
    Sequence,
    _check_cache,
    _draft,
    _drafter,
    _step,
    _visual_rows,
)
from tests.unit.serving.test_text_row_reuse import _one_pass

VIDEO_RUN = (5, 45)  # a 40-token video in the drafter tests' requests


def _prompts(family_name):
    """(family, two prompts): the first with two visual runs, the second with one."""
    if family_name == "qwen2_5_vl":
        v = VISUAL
        return vl_family(VISUAL), [[1, 2, *[v] * 11, 3, 4, 5, *[v] * 6, 6], [7, *[v] * 3, 8, 9]]
    video = frames([1, 2], [1, 3], [1, 4], [1, 5])
    return qwen3(), [[7, *video, 8, *frames([2, 2], [2, 3]), 9], [7, 8, *video, 9]]


@pytest.mark.parametrize("family_name", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("budget", ["none", 1, 4, "all"])
def test_committed_rows_on_the_device_follow_the_host_rule(family_name, budget):
    family, prompts = _prompts(family_name)
    rows = _visual_rows(family, "visual", visual_budget=budget)
    for req_id, prompt in zip("ab", prompts, strict=True):
        rows.add_request(req_id, prompt)
    spans = rows.batch_spans(["a", "b"])
    assert spans is None if (budget, family_name) == ("none", "qwen2_5_vl") else spans.shape[-1] == 3
    committed = rows.is_committed(
        torch.tensor([t for p in prompts for t in p]),
        torch.cat([torch.arange(len(p)) for p in prompts]),
        torch.cat([torch.full((len(p),), b) for b, p in enumerate(prompts)]),
        spans,
    ).tolist()
    expected = []
    for prompt in prompts:
        visual = family.visual_token_mask(prompt, "visual")
        kept = kept_token_mask(visual, budget)
        expected += [not v or k for v, k in zip(visual, kept, strict=True)]
        # the cache's reuse keys: exactly the visual tokens the budget does not keep
        assert rows.token_mask(prompt) == [v and not k for v, k in zip(visual, kept, strict=True)]
    assert committed == expected
    assert sum(not c for c in committed) > 0 if budget != "all" else all(committed)
    rows.release("a")
    rows.release("b")
    assert rows.batch_spans(["a", "b"]) is None


def _committed_kv(drafter, req_id):
    """Each layer's cached (k, v) of the request's rows, read through the one address formula."""
    cache = drafter.cache
    layout = cache.layout
    slot = cache.slot_of(req_id)
    length, first = int(layout.lengths[slot]), int(layout.first_row[slot])
    block, offset = paged_cells(layout.block_table, slot, torch.arange(first, length), layout.block_size)
    return layout.k[:, block.long(), offset], layout.v[:, block.long(), offset]


def _prefilled(chunks, prompt_len=60, budget=8):
    model = _draft()
    drafter = _drafter(model, visual_budget=budget)
    a = Sequence(70, visual=[VIDEO_RUN], seed=4)
    drafter.on_requests_added({"a": RequestContent(tuple(a.x[:prompt_len].tolist()))})
    start, hidden = 0, None
    for n in [*chunks, prompt_len - sum(chunks)]:
        _, hidden = _step(drafter, [("a", a, start, n, n)])
        start += n
    return model, drafter, a, hidden


@pytest.mark.parametrize("chunks", [(7, 13), (7, 12), (19, 1, 1, 20)])
def test_kept_visual_rows_are_the_same_prefilled_in_one_chunk_or_many(chunks):
    """(7, 12): a chunk's sample row (row 18, token 19) is a kept visual row."""
    model, whole, a, hidden = _prefilled(())
    _, chunked, _, chunked_hidden = _prefilled(chunks)
    visual = [int(t) == VISUAL for t in a.x]
    kept = kept_token_mask(visual, 8)
    rows = [i for i in range(60) if not visual[i + 1] or kept[i + 1]]
    assert sum(kept[i + 1] for i in rows) == 8 and kept[19]
    assert whole.cached_rows() == chunked.cached_rows() == {
        "a": {"seq": rows, "tokens": [int(a.x[i + 1]) for i in rows]}}
    # equal up to float rounding: a CPU matmul's sums depend on how many rows it multiplies
    # (rows 8, 13, 18 differ by ~2e-7 in a one-layer draft when prefilled in chunks of 7, 12)
    for mine, theirs in zip(_committed_kv(whole, "a"), _committed_kv(chunked, "a"), strict=True):
        torch.testing.assert_close(theirs, mine, atol=1e-5, rtol=1e-4)
    # the sample row's output: one training-style pass over the committed rows
    torch.testing.assert_close(hidden[0], _one_pass(model, a, rows), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(chunked_hidden[0], hidden[0], atol=1e-5, rtol=1e-4)
    _check_cache(chunked.cache)


def test_a_finished_requests_kept_visual_rows_are_adopted_after_a_prefix_hit():
    model = _draft()
    drafter = _drafter(model, blocks=64, block_size=4, visual_budget=8)
    seq = Sequence(90, visual=[VIDEO_RUN], seed=4)
    visual = [int(t) == VISUAL for t in seq.x]
    kept = kept_token_mask(visual, 8)

    def committed_rows(start, end):
        return [i for i in range(start, end) if not visual[i + 1] or kept[i + 1]]

    def content(prompt_len):
        return RequestContent(tuple(seq.x[:prompt_len].tolist()), ((VIDEO_RUN[0], 40, "video-a"),))

    drafter.on_requests_added({"turn1": content(60)})
    _step(drafter, [("turn1", seq, 0, 60, 60)])
    _step(drafter, [("turn1", seq, 60, 4, 3)])
    drafter.release("turn1")
    # the next turn repeats turn 1 and goes on; vLLM's prefix cache served its first 56 tokens
    hit, prompt_len = 56, 70
    drafter.on_requests_added({"turn2": content(prompt_len)})
    _, hidden = _step(drafter, [("turn2", seq, hit, prompt_len - hit, prompt_len - hit)])
    adopted = committed_rows(0, hit - 1)
    rows = adopted + committed_rows(hit, prompt_len)
    assert sum(kept[i + 1] for i in adopted) == 8  # the video's kept rows came with the prefix
    assert drafter.cached_rows()["turn2"]["seq"] == rows
    assert drafter.cache.stats()["reused_rows"] == len(adopted)
    torch.testing.assert_close(hidden[0], _one_pass(model, seq, rows), atol=1e-5, rtol=1e-4)
    _check_cache(drafter.cache)
