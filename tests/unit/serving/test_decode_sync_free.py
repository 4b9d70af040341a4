"""A decode step never synchronises the host, batch changes included.

A scripted request stream (joins, a finish, an abort, a preemption and resume, prefix-cache
hits, the draft length changing, frame-text spans, a window, a prefill chunk) runs through
the drafter under a TorchDispatchMode that records every op that would synchronise on
CUDA: `_local_scalar_dense` (`.item()`, `int()`, `bool()`), `nonzero`, `masked_select`,
boolean-mask indexing, `repeat_interleave` without `output_size`, `unique`, `equal`, and
device-to-host copies; `.tolist()` and `.numpy()` are recorded too (on the CPU they read
memory without dispatching). Host buffers that device values were copied into without
blocking (host_mirror.host_buffer) are host memory: reading them is not a device read.
Every decode step (at most K + 1 rows per request) must record nothing; the prefill
chunk's reads are listed, which shows the recorder sees them.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sparrow_vllm.serving import host_mirror
from sparrow_vllm.serving.draft_metrics import DraftStepMetrics
from sparrow_vllm.serving.vllm.draft_loading import DRIFT_STEPS
from tests.unit.serving.test_drafter import Sequence, _draft, _drafter, _inputs, apply_event
from tests.unit.serving.test_text_row_reuse import _content

aten = torch.ops.aten
_SYNC_OPS = {
    aten._local_scalar_dense.default: "item",
    aten.nonzero.default: "nonzero",
    aten.masked_select.default: "masked_select",
    aten.equal.default: "equal",
    aten.is_nonzero.default: "is_nonzero",
    aten._unique2.default: "unique",
    aten.unique_consecutive.default: "unique",
    aten.unique_dim.default: "unique",
}
_INDEX_OPS = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
              aten._index_put_impl_.default}


class SyncRecorder(TorchDispatchMode):
    """Records ops that would make the host wait for a CUDA device."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SYNC_OPS:
            self.ops[_SYNC_OPS[func]] += 1
        elif func in _INDEX_OPS and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()) if i is not None
        ):
            self.ops["boolean-mask index"] += 1
        elif func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            self.ops["repeat_interleave without output_size"] += 1
        elif func is aten.copy_.default and args[1].device.type != "cpu" and args[0].device.type == "cpu":
            self.ops["device-to-host copy"] += 1
        elif func is aten._to_copy.default and args[0].device.type != "cpu" and str(kwargs.get("device")) == "cpu":
            self.ops["device-to-host copy"] += 1
        return func(*args, **kwargs)


@pytest.fixture
def recorder(monkeypatch):
    """A SyncRecorder whose `.tolist()` / `.numpy()` reads of non-host-buffer tensors count."""
    rec = SyncRecorder()
    for name in ("tolist", "numpy"):
        original = getattr(torch.Tensor, name)

        def read(self, *args, _original=original, _name=name, **kwargs):
            if not host_mirror.is_host_copy(self):
                rec.ops[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, read)
    return rec


K = 3


def _stream():
    """(event, payload): a request stream with every kind of batch change."""
    a, b, c = Sequence(120, visual=[(5, 17)], seed=1), Sequence(120, seed=2), Sequence(120, seed=3)
    yield "add", {"a": _content(a, 30), "b": _content(b, 20)}
    yield "step", ([("a", a, 0, 30, 30)], K)                            # prefill chunk
    yield "step", ([("a", a, 30, 1, 1), ("b", b, 0, 3, 3)], K)          # b joins (3-row prompt tail)
    yield "step", ([("a", a, 31, 4, 2), ("b", b, 3, 4, 4)], 2)          # K changes
    yield "step", ([("a", a, 33, 3, 1), ("b", b, 7, 3, 3)], 0)          # K = 0
    yield "step", ([("a", a, 34, 1, 1), ("b", b, 10, 1, 1)], K)
    yield "release", "b"                                                 # b finishes
    yield "add", {"c": _content(b, 14)}                                  # c repeats b's prompt
    yield "step", ([("a", a, 35, 4, 3), ("c", b, 12, 2, 2)], K)         # prefix hit, b left
    yield "step", ([("a", a, 38, 4, 4), ("c", b, 14, 4, 1)], K)
    yield "add", {"d": _content(c, 4)}
    yield "step", ([("a", a, 42, 4, 1), ("c", b, 15, 4, 2), ("d", c, 0, 4, 4)], K)  # d joins
    yield "preempt", {"c"}
    yield "step", ([("a", a, 43, 4, 2), ("d", c, 4, 4, 3)], K)          # c preempted
    yield "resume", {"c"}
    yield "step", ([("a", a, 45, 4, 1), ("c", b, 16, 2, 2), ("d", c, 7, 4, 4)], K)  # c recomputed
    yield "release", "d"                                                 # d aborted
    yield "step", ([("a", a, 46, 4, 4), ("c", b, 18, 4, 3)], K)
    for step in range(3):
        yield "step", ([("a", a, 50 + 2 * step, 4, 2), ("c", b, 21 + 2 * step, 4, 2)], K)


@pytest.mark.parametrize("window", [None, 8])
@pytest.mark.parametrize("visual_budget", ["none", 4])  # 4: a's video rows tested against its spans on the device
def test_decode_steps_record_no_sync_op(recorder, window, visual_budget):
    model = _draft(window)
    drafter = _drafter(model, window, slots=4, k=K, blocks=64, block_size=4, drift_steps=DRIFT_STEPS,
                       visual_budget=visual_budget)
    sample = lambda h: (model.compute_logits(h).argmax(-1), None)  # noqa: E731
    metrics = DraftStepMetrics(drafter.cache, "v1", "test", drafter.device)
    per_step: list[tuple[int, Counter[str]]] = []
    for event, payload in _stream():
        if apply_event(drafter, event, payload):
            continue
        parts, k = payload
        inputs = _inputs(parts)
        recorder.ops.clear()
        with recorder:  # with what the adapters record for /metrics around each step
            started = metrics.start()
            drafter.step(inputs, k, sample)
            metrics.stop(started, k)
            report = metrics.report()
        per_step.append((inputs.max_query_len, Counter(recorder.ops)))
    decode = [(i, ops) for i, (rows, ops) in enumerate(per_step) if rows <= K + 1]
    assert len(decode) == len(per_step) - 1
    assert [(i, dict(ops)) for i, ops in decode if ops] == []
    prefill = per_step[0][1]
    assert prefill["nonzero"] >= 1 and prefill["tolist"] >= 1, prefill
    # the stream reached the batch changes it is meant to cover
    stats = drafter.cache.stats()
    assert stats["reused_rows"] > 0, stats
    assert report["reused_rows"] == stats["reused_rows"] and report["drafts_per_step"] == [K], report
    if window is None:  # (a window has left a's video behind)
        kept_video_rows = [i for i in drafter.cached_rows()["a"]["seq"] if 4 <= i < 16]
        assert len(kept_video_rows) == (0 if visual_budget == "none" else 4), kept_video_rows


def test_the_recorder_sees_what_synchronises(recorder):
    x = torch.arange(6)
    with recorder:
        int(x.sum())
        x[x > 2]
        x.nonzero()
        x.tolist()
        torch.repeat_interleave(x, x)
    assert recorder.ops == Counter({"item": 1, "boolean-mask index": 1, "nonzero": 1, "tolist": 1,
                                    "repeat_interleave without output_size": 1}), recorder.ops
