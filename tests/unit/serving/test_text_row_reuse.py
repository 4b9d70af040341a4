"""Reusing finished requests' text rows after a prefix-cache hit: keys, adoption, sharing,
copy-on-write, eviction. The rule checked: a request that adopts rows drafts exactly as if
it had computed them itself, except for the one row vLLM never shows it (the row before
the hit)."""

from __future__ import annotations

import pytest
import torch

from sparrow_vllm.serving.text_row_reuse import (
    RequestContent,
    matching_rows,
    request_contents,
    row_keys,
)
from sparrow_vllm.training.attention import causal_text_attention
from tests.unit.serving.test_drafter import VISUAL, Sequence, _check_cache, _draft, _drafter, _step


def _visual(tokens):
    return [t == VISUAL for t in tokens]


def test_keys_follow_content_and_multimodal_identity():
    tokens = [1, 2, VISUAL, VISUAL, 3, 4, 5]
    video_a, video_b = ((2, 2, "video-a"),), ((2, 2, "video-b"),)
    keys = row_keys(tokens, video_a, _visual(tokens), len(tokens), ())
    # rows whose input token is text: 0 (x1), 3 (x4), 4 (x5), 5 (x6)
    assert [i for i, _ in keys] == [0, 3, 4, 5]
    longer = tokens + [9]
    assert row_keys(longer, video_a, _visual(longer), len(tokens), ()) == keys  # same prefix, same keys
    assert row_keys(tokens, video_a, _visual(tokens), 5, ()) == keys[:2]  # rows with i + 1 < end
    other = row_keys(tokens, video_b, _visual(tokens), len(tokens), ())
    assert other[0] == keys[0] and all(a != b for a, b in zip(other[1:], keys[1:], strict=True))
    salted = row_keys(tokens, video_a, _visual(tokens), len(tokens), (("cache_salt", "s"),))
    assert [i for i, _ in salted] == [0, 3, 4, 5] and not {k for _, k in salted} & {k for _, k in keys}
    assert matching_rows([0, 3, 5], keys) == 2  # a missing row ends the run


def _one_pass(model, seq, rows):
    """Sample-row output of one training-style pass over the given target rows."""
    out = model(
        model.embed_input_ids(seq.x[[i + 1 for i in rows]]),
        seq.h[rows],
        torch.tensor(rows),
        causal_text_attention(1, len(rows), None),
    )
    return out[-1]


def _text_rows(seq, start, end):
    return [i for i in range(start, end) if int(seq.x[i + 1]) != VISUAL]


def _content(seq, prompt_len, video="video-a"):
    return RequestContent(tuple(seq.x[:prompt_len].tolist()), ((5, 12, video),))


def _finished_turn(drafter, seq, req_id="turn1", prompt_len=30, decode=(3, 2, 4)):
    """A request: prefill of its prompt, then decode steps; then it finishes."""
    drafter.on_requests_added({req_id: _content(seq, prompt_len)})
    _step(drafter, [(req_id, seq, 0, prompt_len, prompt_len)])
    end = prompt_len
    for n in decode:
        _step(drafter, [(req_id, seq, end, 4, n)])
        end += n
    drafter.release(req_id)
    return end


def test_next_turn_adopts_the_rows_of_the_finished_one():
    model = _draft()
    drafter = _drafter(model, blocks=64, block_size=4)
    seq = Sequence(90, visual=[(5, 17)])
    end = _finished_turn(drafter, seq)  # rows 0..end-1 committed (end = 39)
    # the next turn: its prompt repeats turn 1 and goes on; vLLM's prefix cache served
    # its first 36 tokens, so its first step starts at 36
    hit, prompt_len = 36, 50
    drafter.on_requests_added({"turn2": _content(seq, prompt_len)})
    _, hidden = _step(drafter, [("turn2", seq, hit, prompt_len - hit, prompt_len - hit)])
    rows = _text_rows(seq, 0, hit - 1) + _text_rows(seq, hit, prompt_len)
    assert drafter.cached_rows()["turn2"]["seq"] == rows
    torch.testing.assert_close(hidden[0], _one_pass(model, seq, rows), atol=1e-5, rtol=1e-4)
    stats = drafter.cache.stats()
    assert stats["reused_rows"] == len(_text_rows(seq, 0, hit - 1)) and end > hit
    _check_cache(drafter.cache)


def test_another_video_adopts_only_the_rows_before_it():
    drafter = _drafter(_draft(), blocks=64, block_size=4)
    seq = Sequence(90, visual=[(5, 17)])
    _finished_turn(drafter, seq)
    drafter.on_requests_added({"other": _content(seq, 50, video="video-b")})
    _step(drafter, [("other", seq, 36, 14, 14)])
    # only the text before the video matches (rows 0..3); nothing from the video on
    assert drafter.cached_rows()["other"]["seq"] == [0, 1, 2, 3] + _text_rows(seq, 36, 50)
    assert drafter.cache.stats()["reused_rows"] == 4


def test_shared_blocks_are_copied_before_a_rewind_writes_into_them():
    """Two requests adopt the same rows; one is preempted and recomputed from inside the
    shared rows. The other request and a third adopter still draft from the original rows."""
    model = _draft()
    drafter = _drafter(model, slots=6, blocks=64, block_size=4)
    seq = Sequence(90, visual=[(5, 17)])
    _finished_turn(drafter, seq)
    for r in ("b", "c"):
        drafter.on_requests_added({r: _content(seq, 50)})
    _step(drafter, [("b", seq, 36, 14, 14), ("c", seq, 36, 14, 14)])
    # b is preempted and recomputed from target row 26 with other hidden states
    other = Sequence(90, visual=[(5, 17)], seed=7)
    drafter.on_requests_resumed({"b"})
    _step(drafter, [("b", other, 26, 4, 4), ("c", seq, 50, 4, 2)])
    _, hidden = _step(drafter, [("b", other, 30, 4, 2), ("c", seq, 52, 4, 3)])
    rows = _text_rows(seq, 0, 35) + _text_rows(seq, 36, 55)
    torch.testing.assert_close(hidden[1], _one_pass(model, seq, rows), atol=1e-5, rtol=1e-4)
    drafter.on_requests_added({"d": _content(seq, 50)})
    _, hidden = _step(drafter, [("d", seq, 36, 14, 14)])
    rows = _text_rows(seq, 0, 35) + _text_rows(seq, 36, 50)
    torch.testing.assert_close(hidden[0], _one_pass(model, seq, rows), atol=1e-5, rtol=1e-4)
    _check_cache(drafter.cache)


def test_reusable_rows_are_evicted_before_live_requests_lose_rows():
    drafter = _drafter(_draft(), slots=4, blocks=14, block_size=4)
    seqs = [Sequence(90, visual=[(5, 17)], seed=s) for s in range(3)]
    _finished_turn(drafter, seqs[0], "old")
    # its rows become reusable once their copy lands (a step that runs out of blocks or
    # adopts rows waits for it)
    drafter.cache.retire_released(wait=True)
    assert drafter.cache.stats()["reusable_entries"] == 1
    # a new request needing most of the pool: the old entry goes, nobody starves
    drafter.on_requests_added({"new": _content(seqs[1], 40)})
    _step(drafter, [("new", seqs[1], 0, 40, 40)])
    stats = drafter.cache.stats()
    assert stats["reusable_entries"] == 0 and stats["starved_requests"] == 0
    assert drafter.cached_rows()["new"]["seq"] == _text_rows(seqs[1], 0, 40)
    _check_cache(drafter.cache)


# ---- what keys the rows: the tokens vLLM prefills, the LoRA adapter, cache_salt ------------


def _new_request_data(req_id, seq, prompt_len, prefill_len=None, lora=None, salt=None):
    """vLLM's NewRequestData for a request whose prompt is seq.x[:prompt_len] (video-a at
    5..16). Model Runner V2 sends `prefill_token_ids` (all the request's tokens: a preempted
    request comes back as new with the tokens it had generated); V1 sends None."""
    from vllm.multimodal.inputs import MultiModalFeatureSpec, PlaceholderRange
    from vllm.v1.core.sched.output import NewRequestData

    video = MultiModalFeatureSpec(data=None, modality="video", identifier="video-a",
                                  mm_position=PlaceholderRange(offset=5, length=12))
    data = NewRequestData(
        req_id=req_id, prompt_token_ids=seq.x[:prompt_len].tolist(), mm_features=[video],
        sampling_params=None, pooling_params=None, block_ids=([],), num_computed_tokens=0,
        lora_request=lora,
        prefill_token_ids=None if prefill_len is None else seq.x[:prefill_len].tolist(),
    )
    data.cache_salt = salt  # what patches.py (ledger entry 12) carries over from vLLM's Request
    return data


def test_preempted_request_resent_with_its_generated_tokens_adopts_them_back():
    """Model Runner V2 removes a preempted request and re-sends it as new with
    prefill_token_ids = prompt + generated tokens; vLLM's prefix cache served 36 of its 39
    tokens (past the 30-token prompt). Its rows come back up to row 34, not only the
    prompt's."""
    model = _draft()
    drafter = _drafter(model, blocks=64, block_size=4)
    seq = Sequence(90, visual=[(5, 17)])
    drafter.on_requests_added(request_contents([_new_request_data("r", seq, 30, 30)]))
    _step(drafter, [("r", seq, 0, 30, 30)])
    end = 30
    for n in (3, 2, 4):
        _step(drafter, [("r", seq, end, 4, n)])
        end += n
    drafter.release("r")  # V2's _remove_request on preemption
    hit = 36
    drafter.on_requests_added(request_contents([_new_request_data("r", seq, 30, end)]))
    _, hidden = _step(drafter, [("r", seq, hit, end - hit, end - hit)])
    rows = _text_rows(seq, 0, hit - 1) + _text_rows(seq, hit, end)
    assert drafter.cached_rows()["r"]["seq"] == rows
    assert drafter.cache.stats()["reused_rows"] == len(_text_rows(seq, 0, hit - 1))
    torch.testing.assert_close(hidden[0], _one_pass(model, seq, rows), atol=1e-5, rtol=1e-4)
    _check_cache(drafter.cache)


def _lora(name, path):
    from vllm.lora.request import LoRARequest

    return LoRARequest(name, 1, path)


@pytest.mark.parametrize(
    ("first", "second", "shared"),
    [
        ({}, {}, True),
        ({"salt": "a"}, {"salt": "a"}, True),
        ({"salt": "a"}, {"salt": "b"}, False),
        ({"salt": "a"}, {}, False),
        ({"lora": ("x", "/x")}, {"lora": ("x", "/x")}, True),
        ({"lora": ("x", "/x")}, {"lora": ("y", "/y")}, False),
        ({"lora": ("x", "/x")}, {"lora": ("x", "/x2")}, False),  # vLLM keys the path too
        ({"lora": ("x", "/x")}, {}, False),
        ({"lora": ("x", "/x"), "salt": "a"}, {"lora": ("x", "/x"), "salt": "b"}, False),
    ],
    ids=["plain", "same-salt", "other-salt", "salt-vs-none", "same-lora", "other-lora",
         "other-lora-path", "lora-vs-none", "same-lora-other-salt"],
)
def test_rows_are_shared_only_within_one_lora_adapter_and_cache_salt(first, second, shared):
    """vLLM's prefix cache keys blocks by LoRA adapter (name, path) and cache_salt; draft
    rows follow the same rule (other target weights, or a salt that isolates users)."""

    def data(req_id, prompt_len, spec):
        lora = _lora(*spec["lora"]) if "lora" in spec else None
        return _new_request_data(req_id, seq, prompt_len, lora=lora, salt=spec.get("salt"))

    drafter = _drafter(_draft(), blocks=64, block_size=4)
    seq = Sequence(90, visual=[(5, 17)])
    drafter.on_requests_added(request_contents([data("turn1", 30, first)]))
    _step(drafter, [("turn1", seq, 0, 30, 30)])
    drafter.release("turn1")
    drafter.on_requests_added(request_contents([data("turn2", 50, second)]))
    _step(drafter, [("turn2", seq, 24, 26, 26)])
    reused = _text_rows(seq, 0, 23)
    assert drafter.cache.stats()["reused_rows"] == (len(reused) if shared else 0)
    expected = (reused if shared else []) + _text_rows(seq, 24, 50)
    assert drafter.cached_rows()["turn2"]["seq"] == expected
