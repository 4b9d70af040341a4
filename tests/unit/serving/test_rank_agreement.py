"""Every tensor-parallel rank runs its own drafter and draft cache, and Model Runner V2
verifies each rank's own drafts: two ranks fed the same steps must hold the same rows and
draft the same tokens, whenever their copies of the row counts land.

Rank 0's copies land at once; rank 1's often have not landed when the next step starts
(a busy device). The stream has joins, chunked prefill, decode with rejections, a
finished request, a prefix-cache hit that adopts its rows, a tight pool (eviction of
reusable rows, starvation), a preemption and the resumed request's recompute."""

from __future__ import annotations

import random

import torch

from sparrow_vllm.serving.host_mirror import LengthMirror
from tests.unit.serving.test_drafter import (
    Sequence,
    _check_cache,
    _draft,
    _drafter,
    _step,
    apply_event,
)
from tests.unit.serving.test_text_row_reuse import _content

K = 3


class LateCopy:
    """A device-to-host copy that has often not landed when asked (`query`), and has once
    waited for (`synchronize`). On the CPU the data is there at once either way."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.landed = True

    def record(self) -> None:
        self.landed = self.rng.random() < 0.3

    def query(self) -> bool:
        return self.landed

    def synchronize(self) -> None:
        self.landed = True


def _rank(late: bool):
    drafter = _drafter(_draft(), slots=8, k=K, blocks=26, block_size=4)
    if late:
        rng = random.Random(7)
        drafter.cache._mirror = LengthMirror(drafter.cache.layout.lengths, event_factory=lambda: LateCopy(rng))
    return drafter


def _state(drafter):
    cache = drafter.cache
    return {
        "rows": drafter.cached_rows(),
        "blocks": {cache._rows[s].req_id: dict(cache._rows[s].blocks) for s in cache._slot_of.values()},
        "table": cache.layout.block_table.clone(),
        "stats": cache.stats(),
    }


def _stream():
    """(event, payload) of one scripted request stream; acceptance drawn from a seed."""
    rng = random.Random(3)
    seqs = {f"r{i}": Sequence(160, seed=10 + i) for i in range(4)}
    seqs["r2"] = seqs["r0"]  # r2 repeats r0's prompt: vLLM serves its prefix from cache
    end = {}

    def decode(req_ids):
        parts = []
        for r in req_ids:
            accepted = rng.randint(1, K + 1)
            parts.append((r, seqs[r], end[r], K + 1, accepted))
            end[r] += accepted
        return ("step", parts)

    yield ("add", {"r0": _content(seqs["r0"], 30), "r1": _content(seqs["r1"], 20)})
    yield ("step", [("r0", seqs["r0"], 0, 16, 16)])
    yield ("step", [("r0", seqs["r0"], 16, 14, 14), ("r1", seqs["r1"], 0, 20, 20)])
    end.update(r0=30, r1=20)
    for _ in range(6):
        yield decode(["r0", "r1"])
    yield ("release", "r0")
    yield ("add", {"r2": _content(seqs["r2"], 40)})
    yield ("step", [("r1", seqs["r1"], end["r1"], K + 1, 2), ("r2", seqs["r2"], 28, 12, 12)])
    end["r1"] += 2
    end["r2"] = 40
    for _ in range(5):
        yield decode(["r1", "r2"])
    yield ("preempt", {"r1"})
    yield ("add", {"r3": _content(seqs["r3"], 60)})
    yield ("step", [("r2", seqs["r2"], end["r2"], K + 1, 3), ("r3", seqs["r3"], 0, 60, 60)])
    end["r2"] += 3
    end["r3"] = 60
    for _ in range(8):
        yield decode(["r2", "r3"])
    # r1 resumes: recomputed from target row 16 (vLLM's prefix cache kept rows 0..15)
    yield ("step", [("r1", seqs["r1"], 16, end["r1"] - 16, end["r1"] - 16),
                    ("r2", seqs["r2"], end["r2"], K + 1, 1), ("r3", seqs["r3"], end["r3"], K + 1, 4)])
    end["r2"] += 1
    end["r3"] += 4
    for _ in range(10):
        yield decode(["r1", "r2", "r3"])


def test_ranks_whose_copies_land_at_different_times_hold_the_same_rows_and_drafts():
    ranks = [_rank(late=False), _rank(late=True)]
    steps = 0
    for event, payload in _stream():
        results = []
        for drafter in ranks:
            if not apply_event(drafter, event, payload):
                results.append(_step(drafter, payload, k=K)[0])
        if event != "step":
            continue
        steps += 1
        torch.testing.assert_close(results[0], results[1], rtol=0, atol=0, msg=f"drafts, step {steps}")
        states = [_state(d) for d in ranks]
        assert states[0]["rows"] == states[1]["rows"], f"cached rows differ after step {steps}"
        assert states[0]["blocks"] == states[1]["blocks"], f"blocks differ after step {steps}"
        assert torch.equal(states[0]["table"], states[1]["table"]), f"block tables, step {steps}"
        assert states[0]["stats"] == states[1]["stats"], f"stats differ after step {steps}"
        for drafter in ranks:
            _check_cache(drafter.cache)
    # the stream reached what it is meant to test
    stats = ranks[0].cache.stats()
    assert stats["reused_rows"] > 0 and stats["starved_requests"] > 0, stats
