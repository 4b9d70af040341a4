"""Acceptance and speedup arithmetic shared by the benchmarks and the demo.

Acceptance length follows vLLM: 1 + accepted draft tokens / drafts, where a draft is one
proposal of up to K tokens for one request in one engine step (so the target emits
`acceptance length` tokens per verification step on average). DSR is the decode-phase
speedup (target-alone decode time / speculative decode time, prefill excluded); ESR is the
end-to-end speedup (prefill and decode).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

SPEC_COUNTERS = (
    "vllm:spec_decode_num_drafts",
    "vllm:spec_decode_num_draft_tokens",
    "vllm:spec_decode_num_accepted_tokens",
)
PER_POSITION = "vllm:spec_decode_num_accepted_tokens_per_pos"


def counter_delta(before: Mapping[str, object], after: Mapping[str, object]) -> dict[str, object]:
    """after - before for vLLM's spec-decode counters (scalars and the per-position vector)."""
    out: dict[str, object] = {}
    for name in SPEC_COUNTERS:
        out[name] = float(after.get(name) or 0) - float(before.get(name) or 0)
    b, a = list(before.get(PER_POSITION) or []), list(after.get(PER_POSITION) or [])
    b += [0] * (len(a) - len(b))
    out[PER_POSITION] = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    return out


def counter_sum(counters: Sequence[Mapping[str, object]]) -> dict[str, object]:
    """The spec-decode counters of several requests added up (per position, element-wise)."""
    out: dict[str, object] = {name: sum(float(c.get(name) or 0) for c in counters) for name in SPEC_COUNTERS}
    vectors = [list(c.get(PER_POSITION) or []) for c in counters]
    width = max(map(len, vectors), default=0)
    out[PER_POSITION] = [sum(float(v[i]) for v in vectors if i < len(v)) for i in range(width)]
    return out


def acceptance(counters: Mapping[str, object]) -> dict[str, object]:
    """Acceptance length and per-position acceptance rates from spec-decode counters."""
    drafts = float(counters.get("vllm:spec_decode_num_drafts") or 0)
    accepted = float(counters.get("vllm:spec_decode_num_accepted_tokens") or 0)
    per_pos = [float(x) for x in counters.get(PER_POSITION) or []]
    return {
        "drafts": drafts,
        "draft_tokens": float(counters.get("vllm:spec_decode_num_draft_tokens") or 0),
        "accepted_tokens": accepted,
        "acceptance_length": 1.0 + accepted / drafts if drafts else None,
        "per_position_rate": [x / drafts for x in per_pos] if drafts else [],
    }


def speedups(baseline: Sequence[Mapping[str, float]], method: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """DSR and ESR of `method` over `baseline`, from per-request timings of the same
    requests (each with prefill_s and decode_s), summed over requests."""
    if len(baseline) != len(method):
        raise ValueError(f"{len(baseline)} baseline requests but {len(method)} method requests; "
                         "compare the same requests")
    base_decode = sum(r["decode_s"] for r in baseline)
    base_total = base_decode + sum(r["prefill_s"] for r in baseline)
    decode = sum(r["decode_s"] for r in method)
    total = decode + sum(r["prefill_s"] for r in method)
    return {"dsr": base_decode / decode, "esr": base_total / total}
