"""Paired bootstrap intervals for comparing two speculative methods on the same requests.

Every request of a benchmark runs under each method, so request i's content (scene,
length, answer) is shared: resampling request indices jointly for both methods cancels it,
and an interval of the difference resolves far smaller gaps than two separate intervals.
This is how the IVSB study (benchmarks/ablation.py) compares drafts over held-out
sequences; here the sequences are a benchmark's requests and their spec-decode counters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from sparrow_vllm.bench.intervals import bootstrap_picks, ci95

DRAFTS = "vllm:spec_decode_num_drafts"
ACCEPTED = "vllm:spec_decode_num_accepted_tokens"


def drafts_accepted(counters: Sequence[Mapping[str, object]]) -> np.ndarray:
    """[R, 2] (drafts, accepted tokens) per request from per-request spec-decode counters."""
    return np.array([[float(c.get(DRAFTS) or 0), float(c.get(ACCEPTED) or 0)] for c in counters], dtype=float)


def tau(rows: np.ndarray) -> np.ndarray:
    """Acceptance length 1 + accepted / drafts of [..., R, 2] (drafts, accepted) rows, summed
    over R (a scalar array for [R, 2]; one per draw for [draws, R, 2])."""
    return 1.0 + rows[..., 1].sum(-1) / np.maximum(rows[..., 0].sum(-1), 1.0)


def acceptance_difference(a: np.ndarray, b: np.ndarray, draws: int = 4000, seed: int = 0) -> dict[str, object]:
    """Acceptance length of method a and b (each [R, 2] drafts/accepted for the same R
    requests) and a - b, each with a 95% interval, requests resampled jointly."""
    if a.shape != b.shape:
        raise ValueError(f"paired acceptance needs the same requests for both methods: {a.shape} vs {b.shape}")
    picks = bootstrap_picks(len(a), draws, seed)
    tau_a, tau_b = tau(a[picks]), tau(b[picks])
    return {"a": float(tau(a)), "b": float(tau(b)), "a_ci95": ci95(tau_a), "b_ci95": ci95(tau_b),
            "diff": float(tau(a) - tau(b)), "diff_ci95": ci95(tau_a - tau_b)}


def speedup_ratio(base: Sequence[float], a: Sequence[float], b: Sequence[float], draws: int = 4000,
                  seed: int = 0) -> dict[str, object]:
    """Decode speedups of methods a and b over `base` from per-request decode seconds of the
    same requests. Judged by medians over requests, so one request slowed by something else
    on the machine does not decide it: DSR = median_i base_i / method_i, and a's speedup over
    b, median_i b_i / a_i (the baseline cancels), each with a 95% bootstrap interval, requests
    resampled jointly. `dsr_*_sum` are the sum-based speedups of the tables (sum(base) / sum(method))."""
    x, y, z = (np.asarray(v, dtype=float) for v in (base, a, b))
    if not len(x) == len(y) == len(z):
        raise ValueError(f"paired speedups need the same requests: {len(x)}, {len(y)}, {len(z)}")
    picks = bootstrap_picks(len(x), draws, seed)
    dsr_a, dsr_b, ratio = x / y, x / z, z / y
    return {"dsr_a": float(np.median(dsr_a)), "dsr_b": float(np.median(dsr_b)),
            "dsr_a_ci95": ci95(np.median(dsr_a[picks], axis=1)), "dsr_b_ci95": ci95(np.median(dsr_b[picks], axis=1)),
            "dsr_a_sum": float(x.sum() / y.sum()), "dsr_b_sum": float(x.sum() / z.sum()),
            "ratio": float(np.median(ratio)), "ratio_ci95": ci95(np.median(ratio[picks], axis=1))}
