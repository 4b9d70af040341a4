"""The drafter under torch.compile: the decode step captures whole (fullgraph), and the
compiled draft forward (what serving runs in vLLM's default compile mode) drafts exactly
what the eager one drafts, through every kind of batch change."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.eval_frame import _debug_get_cache_entry_list

from sparrow_vllm.serving.drafter import TextAnchoredDrafter
from sparrow_vllm.serving.vllm.draft_loading import DRIFT_STEPS
from tests.unit.serving.test_decode_sync_free import K, _stream
from tests.unit.serving.test_drafter import _draft, _drafter, _inputs, apply_event


def _run(drafter, model):
    """Drafts and cached rows of every step of the scripted stream."""
    sample = lambda h: (model.compute_logits(h).argmax(-1), None)  # noqa: E731
    out = []
    for event, payload in _stream():
        if apply_event(drafter, event, payload):
            continue
        parts, k = payload
        drafts, _ = drafter.step(_inputs(parts), k, sample)
        out.append((drafts.clone(), drafter.cached_rows()))
    return out


def _same(a, b):
    assert len(a) == len(b)
    for step, ((drafts_a, rows_a), (drafts_b, rows_b)) in enumerate(zip(a, b, strict=True)):
        torch.testing.assert_close(drafts_a, drafts_b, rtol=0, atol=0, msg=f"drafts, step {step}")
        assert rows_a == rows_b, f"cached rows, step {step}"


def _pair(compile_backend=None, visual_budget="none"):
    """An eager drafter and a second one over the same weights (compiled if asked)."""
    torch._dynamo.reset()
    model = _draft(None)
    eager = _drafter(model, None, k=K, drift_steps=DRIFT_STEPS, visual_budget=visual_budget)
    other = _drafter(model, None, k=K, drift_steps=DRIFT_STEPS, compile_backend=compile_backend,
                     visual_budget=visual_budget)
    return model, eager, other


@pytest.mark.parametrize("visual_budget", ["none", 4])
def test_decode_step_compiles_as_one_graph(visual_budget):
    """fullgraph=True raises on any graph break: the whole decode step (row selection,
    the draft forward with its attention op, the cache writes, the K-token chain) is one
    graph per shape family. Dynamo with the eager backend: the capture is what is tested.
    (A window adds no branch the trace could break on; budget 4 adds a's video spans to
    the row selection.)"""
    model, eager, compiled = _pair(visual_budget=visual_budget)
    compiled.decode_step = torch.compile(compiled.decode_step, fullgraph=True, backend="eager", dynamic=True)
    _same(_run(eager, model), _run(compiled, model))


def test_compiled_draft_forward_drafts_like_the_eager_one():
    """The serving configuration: the draft forward compiled by inductor (vLLM's CPU
    default), dynamic shapes, the rest of the step eager."""
    model, eager, compiled = _pair("inductor")
    _same(_run(eager, model), _run(compiled, model))


def test_warm_up_compiles_every_shape_family_serving_meets():
    """The compiled forward's graphs all come from warm-up: a stream of batch changes,
    chunked prefill and changing K adds none (a recompile per new shape would stall
    serving for seconds, and past dynamo's limit of 8 it would run eagerly)."""
    model, _, drafter = _pair("eager")
    code = TextAnchoredDrafter._forward_eager.__code__
    drafter.warm_up(4, model.draft.layer_config.hidden_size, torch.float32)
    warmed = len(_debug_get_cache_entry_list(code))
    _run(drafter, model)
    assert len(_debug_get_cache_entry_list(code)) == warmed <= 6
