"""The draft cache's host work per request per decode step follows the rows the step
adds or drops, not the request's context (issue 28): `reserve` over a request holding
hundreds of blocks looks at a handful of its block-map entries, with and without a
window. Counted, not timed (benchmarks/cache_host_work.py has the times)."""

from __future__ import annotations

import pytest
import torch

from sparrow_vllm.serving.text_kv_cache import TextKVCache
from tests.unit.serving.test_drafter import _check_cache

BLOCK = 4
CONTEXT_BLOCKS = 600
K = 3


class CountingDict(dict):
    """A block map that counts the entries the allocator looks at (membership tests,
    reads, and each entry an iteration yields)."""

    looked_at = 0

    def __contains__(self, key):
        CountingDict.looked_at += 1
        return super().__contains__(key)

    def __getitem__(self, key):
        CountingDict.looked_at += 1
        return super().__getitem__(key)

    def get(self, key, default=None):
        CountingDict.looked_at += 1
        return super().get(key, default)

    def __iter__(self):
        for key in super().__iter__():
            CountingDict.looked_at += 1
            yield key

    def keys(self):
        return list(iter(self))

    def values(self):
        return [super(CountingDict, self).__getitem__(k) for k in iter(self)]

    def items(self):
        return [(k, super(CountingDict, self).__getitem__(k)) for k in iter(self)]


@pytest.mark.parametrize("window", [None, (CONTEXT_BLOCKS - 8) * BLOCK])
def test_reserve_looks_at_new_blocks_only(window):
    requests = 3
    cache = TextKVCache(
        num_layers=1, num_blocks=requests * (CONTEXT_BLOCKS + 40), block_size=BLOCK,
        num_slots=2 * requests, table_width=CONTEXT_BLOCKS + 40, num_kv_heads=1, head_dim=1,
        dtype=torch.float32, device="cpu", window=window,
    )
    req_ids = [f"r{i}" for i in range(requests)]
    active = set(req_ids)
    zeros = torch.zeros(requests, dtype=torch.int64)
    slots, _ = cache.prepare_batch(req_ids, zeros, [0] * requests, set())
    context = CONTEXT_BLOCKS * BLOCK - 2
    cache.sync(slots, [0] * requests)
    cache.reserve(slots, [context] * requests, K, active)  # the prompt
    cache.layout.lengths[slots] = context
    cache.after_write()
    for slot in slots:
        cache._rows[slot].blocks = CountingDict(cache._rows[slot].blocks)
    assert cache.blocks_held("r0") >= CONTEXT_BLOCKS - 8

    def held():
        return {(slot, *entry) for slot in slots for entry in dict.items(cache._rows[slot].blocks)}

    looked_at, changed = [], []
    for step in range(40):
        before = held()
        CountingDict.looked_at = 0
        cache.reserve(slots, [K + 1] * requests, K - 1, active)
        looked_at.append(CountingDict.looked_at)
        changed.append(len(before ^ held()))  # blocks taken or freed
        cache.layout.lengths[slots] += torch.tensor([1 + (step + i) % (K + 1) for i in range(requests)])
        cache.after_write()
        _check_cache(cache)
    # a few entries per request, and a few per block the step took or freed (the first
    # windowed step frees the rows the window left behind since the prompt)
    assert all(n <= 4 * requests + 4 * c for n, c in zip(looked_at, changed, strict=True)), (looked_at, changed)
    assert sum(changed) > 0
    if window is not None:
        assert cache.blocks_held("r0") < CONTEXT_BLOCKS  # the window moved and freed blocks
