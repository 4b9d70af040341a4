"""Training rows, the chain estimator and their parity with the serving drafter.

The parity test is the contract between training and serving: the chain of K drafts the
training code computes from a row (base pass + chain rows, text rows only, window) equals
the drafts TextAnchoredDrafter proposes for the same sequence, however its rows arrived.
"""

from __future__ import annotations

import pytest
import torch

from sparrow_vllm.serving.text_row_reuse import RequestContent
from sparrow_vllm.serving.visual_rows import VisualRows
from sparrow_vllm.training.acceptance import chain_drafts, simulate
from sparrow_vllm.training.rows import attention_mask, build_rows, previous_text_row
from tests.unit.helpers import vl_family
from tests.unit.serving.test_drafter import VISUAL, Sequence, _draft, _drafter, _step


def _record(seq: Sequence, bridge_dim: int | None = None, family=None) -> dict[str, torch.Tensor]:
    n = len(seq.x)
    visual = seq.x == VISUAL if family is None else torch.tensor(family.visual_token_mask(seq.x.tolist()))
    record = {
        "input_ids": seq.x, "positions": torch.arange(n), "visual_mask": visual,
        "features": seq.h, "target_next": torch.roll(seq.x, -1), "loss_start": torch.tensor(n // 2),
    }
    if bridge_dim:
        record["bridge"] = torch.full((int(visual.sum()), bridge_dim), 5.0)
    return record


def test_rows_pair_next_token_with_current_state_and_drop_visual_rows():
    seq = Sequence(12, visual=[(3, 6)])
    rows = build_rows(_record(seq), "text")
    # row i embeds x_{i+1}; rows 2..4 embed visual tokens and are dropped
    assert rows.source.tolist() == [0, 1, 5, 6, 7, 8, 9, 10]
    assert torch.equal(rows.token_ids, seq.x[rows.source + 1])
    assert torch.equal(rows.hidden, seq.h[rows.source])
    assert torch.equal(rows.feature_target, seq.h[rows.source + 1])
    # loss rows predict a text token: not row 1 (next is visual x_3) nor the last row
    assert rows.loss_mask.tolist() == [True, False, True, True, True, True, True, False]


def test_bridge_rows_carry_visual_states_and_full_rows_keep_everything():
    seq = Sequence(12, visual=[(3, 6)])
    bridge = build_rows(_record(seq, bridge_dim=seq.h.shape[1]), "bridge")
    assert bridge.is_bridge.tolist() == [i in (2, 3, 4) for i in range(11)]
    assert bool((bridge.bridge[bridge.is_bridge] == 5.0).all())
    assert bool((bridge.bridge[~bridge.is_bridge] == 0).all())
    full = build_rows(_record(seq), "full")
    assert len(full) == 11 and not bool(full.is_bridge.any())
    with pytest.raises(ValueError, match="no-ivsb"):
        build_rows(_record(seq), "bridge")


def test_window_counts_text_rows_and_keeps_visual_keys():
    seq = Sequence(12, visual=[(3, 6)])
    rows = build_rows(_record(seq, bridge_dim=seq.h.shape[1]), "bridge")
    mask = attention_mask(rows, window=2)
    # row 7 (text) sees itself, text row 6, and every visual row before it
    assert mask[7].nonzero().flatten().tolist() == [2, 3, 4, 6, 7]
    assert torch.equal(attention_mask(rows, None), torch.ones(11, 11, dtype=torch.bool).tril())


def test_mtp_feeds_only_text_rows_after_text_rows():
    seq = Sequence(12, visual=[(3, 6)])
    rows = build_rows(_record(seq), "full")
    assert previous_text_row(rows).tolist() == [
        False, True, False, False, False, False, True, True, True, True, True,
    ]


def test_simulation_steps_like_vllm():
    seq = Sequence(12)
    rows = build_rows(_record(seq), "text")
    target_next = torch.arange(100, 112)
    drafts = torch.zeros(len(rows), 3, dtype=torch.long)
    # prefill emits x_6; row 5 (embeds x_6) drafts x_7..x_9: the first two are right,
    # the target adds x_9 as its bonus token
    drafts[5] = torch.tensor([106, 107, 0])
    # row 8 (embeds x_9) drafts x_10, x_11; only two fit before the end at x_11
    drafts[8] = torch.tensor([109, 110, 111])
    stats = simulate(rows, torch.arange(len(rows)), drafts, target_next, loss_start=6)
    assert (stats.drafts, stats.accepted) == (2, 4)
    assert stats.per_position == [2, 2, 0]
    assert stats.acceptance_length == pytest.approx(3.0)


# family -> its visual segment in a 40-token sequence (placeholders VISUAL; Qwen3-VL's
# frames carry timestamp text and markers between them)
START, END = 61, 62
FAMILY_SEGMENTS = {
    "qwen2_vl": [VISUAL] * 11,
    "qwen2_5_vl": [VISUAL] * 11,
    "qwen3_vl": [1, 2, START, VISUAL, VISUAL, END, 3, 4, START, VISUAL, VISUAL, VISUAL, END],
    "llava_onevision": [VISUAL] * 11,
}


def _family(name):
    if name == "llava_onevision":
        from types import SimpleNamespace

        from sparrow_vllm.families import resolve_family

        return resolve_family(SimpleNamespace(model_type=name, image_token_index=VISUAL, video_token_index=VISUAL))
    return vl_family(VISUAL, start=START, end=END, model_type=name)


@pytest.mark.parametrize("family_name", sorted(FAMILY_SEGMENTS))
@pytest.mark.parametrize("window", [None, 2, 5])
def test_training_chain_equals_serving_drafts(window, family_name):
    """Per family: training marks visual rows with the family's rule (the features'
    visual_mask), serving skips rows with the same rule (VisualRows), and the drafts agree."""
    family = _family(family_name)
    model = _draft(window)
    drafter = _drafter(model, window, k=3)
    drafter.visual_rows = VisualRows(family, "visual", torch.device("cpu"))
    drafter.cache.visual_token_mask = drafter.visual_rows.token_mask
    seq = Sequence(40, seed=3)
    segment = torch.tensor(FAMILY_SEGMENTS[family_name])
    seq.x[4 : 4 + len(segment)] = segment
    drafter.on_requests_added({"a": RequestContent(tuple(seq.x[:22].tolist()))})
    rows = build_rows(_record(seq, family=family), "text")
    drafts = chain_drafts(model.draft, model.embed_input_ids, model.compute_logits, rows, window, 3)
    row_of = {int(s): r for r, s in enumerate(rows.source)}
    # chains from a subset of start rows are the same chains
    starts = torch.tensor([row_of[21], row_of[23], row_of[24]])
    subset = chain_drafts(model.draft, model.embed_input_ids, model.compute_logits, rows, window, 3, starts)
    assert torch.equal(subset, drafts[starts])
    _step(drafter, [("a", seq, 0, 10, 10)])
    _step(drafter, [("a", seq, 10, 12, 12)])
    end = 22
    for nv in (2, 1, 3):
        served, _ = _step(drafter, [("a", seq, end, 4, nv)], k=3)
        end += nv
        assert served[0].tolist() == drafts[row_of[end - 1]].tolist()


def test_chunked_base_pass_equals_one_chunk(monkeypatch):
    from sparrow_vllm.training import acceptance

    model = _draft(4, layers=2)
    seq = Sequence(30, visual=[(4, 15)], seed=5)
    rows = build_rows(_record(seq), "full")
    whole = chain_drafts(model.draft, model.embed_input_ids, model.compute_logits, rows, None, 3)
    monkeypatch.setattr(acceptance._ChainAttention, "CHUNK", 4)
    chunked = chain_drafts(model.draft, model.embed_input_ids, model.compute_logits, rows, None, 3)
    assert torch.equal(whole, chunked)


def _two_videos():
    # two visual runs of 7 tokens: x_3..x_9 and x_15..x_21
    return Sequence(30, visual=[(3, 10), (15, 22)], seed=4)


def test_visual_budget_keeps_the_rows_whose_next_token_it_keeps():
    from sparrow_vllm.draft.visual_budget import kept_token_mask

    seq = _two_videos()
    record = _record(seq)
    visual = record["visual_mask"].tolist()
    full = build_rows(record, "full")
    # none: today's text rows, bit for bit (the full row set less every visual row)
    text = build_rows(record, "text", "none")
    for name, value in vars(build_rows(record, "text")).items():
        assert torch.equal(getattr(text, name), value)
        assert torch.equal(getattr(text, name), getattr(full, name)[~full.is_visual])
    # 3: row i stays iff token i + 1 is text or one of the 3 kept tokens of its run
    kept_tokens = kept_token_mask(visual, 3)
    assert sum(kept_tokens[3:10]) == sum(kept_tokens[15:22]) == 3 and sum(kept_tokens) == 6
    three = build_rows(record, "text", 3)
    expected = [i for i in range(29) if not visual[i + 1] or kept_tokens[i + 1]]
    assert three.source.tolist() == expected
    kept_visual = three.source[three.is_visual].tolist()
    assert kept_visual == [i for i in range(29) if kept_tokens[i + 1]] and len(kept_visual) == 6
    # kept visual rows are FC rows at their own positions, with no loss and no MTP feed
    assert not bool(three.is_bridge.any()) and not bool(three.loss_mask[three.is_visual].any())
    assert torch.equal(three.token_ids, seq.x[three.source + 1])
    assert torch.equal(three.hidden, seq.h[three.source])
    assert torch.equal(three.positions, three.source)
    assert not bool(previous_text_row(three)[three.is_visual].any())
    for name, value in vars(three).items():
        assert torch.equal(value, getattr(full, name)[expected])
    # all: every visual row, the full row set in Sparrow form
    every = build_rows(record, "text", "all")
    for name, value in vars(every).items():
        assert torch.equal(value, getattr(full, name))
    # bridge and full rows do not depend on the budget
    assert torch.equal(build_rows(record, "full", 3).source, full.source)


def test_kept_visual_rows_count_in_the_window_in_training_and_chains():
    from sparrow_vllm.training.acceptance import _ChainAttention

    rows = build_rows(_record(_two_videos()), "text", 3)
    mask = attention_mask(rows, window=2)
    # every row sees itself and the row before it, kept visual or text alike
    assert torch.equal(mask, torch.ones_like(mask).tril() & ~torch.ones_like(mask).tril(-2))
    chain = _ChainAttention(rows, 2, torch.arange(len(rows)))
    assert torch.equal(chain._mask(torch.arange(len(rows))), mask)
    # without kept rows (text mode) and for bridge rows the rule is the one it was
    seq = _two_videos()
    bridge = build_rows(_record(seq, bridge_dim=seq.h.shape[1]), "bridge")
    old_rank = torch.cumsum((~bridge.is_visual).long(), 0)
    old = (old_rank[:, None] - old_rank[None, :] < 3) | bridge.is_visual[None, :]
    assert torch.equal(attention_mask(bridge, 3), old & torch.ones_like(old).tril())
