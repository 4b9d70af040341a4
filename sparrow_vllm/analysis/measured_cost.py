"""A measured step cost for the offline replay (trace_replay.py), and how well the linear
one fits: on a 2-core CPU with a toy target and 8k-token videos the mean step time is not
linear in K (decode-only steps at one point: 6.8, 9.9, 13.5, 13.4 ms at K = 0..3), so a
linear theta mispredicts and misranks policies; `MeasuredCost` uses the measured per-K
means instead, `fit_quality` shows the linear fit's error per trace."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from sparrow_vllm.analysis.trace_replay import ReplayPlan, StepSeconds, Trace, steps_of


def fit_quality(traces: dict[str, Trace], theta: np.ndarray) -> dict[str, dict[str, float]]:
    """Per trace name: its finished steps (timed > 0), measured and theta-predicted mean step
    seconds, and the relative RMS error of theta . features over those steps."""
    quality = {}
    for name, (header, events) in traces.items():
        done = [s for s in steps_of(events) if s.seconds is not None and s.seconds > 0]
        if not done:
            raise ValueError(f"fit_quality: trace {name!r} has no finished step timed > 0 (record a longer trace)")
        seconds = np.array([s.seconds for s in done])
        predicted = np.array([float(theta @ s.shape(header["num_speculative_tokens"]).features(s.k)) for s in done])
        quality[name] = {"steps": len(done), "measured_mean_s": float(seconds.mean()),
                         "predicted_mean_s": float(predicted.mean()),
                         "relative_rms": float(np.sqrt(np.mean(((predicted - seconds) / seconds) ** 2)))}
    return quality


def _decode_only(requests: list[tuple[int, bool]], max_verify_tokens: int) -> bool:
    """Whether a step's (query tokens, samples) rows are all verify passes: no prompt chunk.
    A prompt chunk's time does not follow the draft length, and the same prompts are served
    in fewer steps at a larger K, so steps with one would inflate m(K) at larger K."""
    return bool(requests) and all(samples and q <= max_verify_tokens for q, samples in requests)


@dataclass(frozen=True)
class MeasuredCost:
    """Measured step cost (a trace_replay.StepCost): means[K] = m(K), the mean seconds of the
    finished decode-only steps (every request a verify pass, no prompt chunk) of the trace
    at fixed K (K = 0: no speculation).
    Simulated step n = recorded seconds of step n in the K_max workload x (0.5 m(K_{n-1}) +
    0.5 m(K_n)) / m(K_max): K_{n-1} the K' of the step that drafted what step n verifies
    (the verify width; with passes drafted by several steps, the mean of m over its passes;
    K_max for drafts from before the trace; a step verifying nothing: m(K_n)), K_n its own
    K' (the draft chain). An interpolation between measured points, exact in the mean for a
    fixed K with no linear assumption; its limit: a step that mixes a verify width and a
    draft chain is priced half the one, half the other (the split of a step's time between
    verifying and drafting is not measured). Steps with a prompt chunk keep their recorded
    time (the verify passes and draft chain beside the chunk are not rescaled); keep_noise=False: m(K_max) stands for each sampling step's recorded time.
    Every step's seconds are a sum of per-decision terms, so trace_replay.oracle stays exact."""

    means: dict[int, float]

    @classmethod
    def from_traces(cls, traces: Sequence[Trace]) -> MeasuredCost:
        """From the traces of no speculation and of fixed K = 1..K_max at one load point."""
        means: dict[int, float] = {}
        for header, events in traces:
            policy = header.get("policy")
            if policy not in ("none", "fixed"):
                raise ValueError(f"MeasuredCost needs traces of no speculation or of a fixed K; one's policy is "
                                 f"{policy!r} (leave the adaptive trace out)")
            k = header["num_speculative_tokens"] if policy == "fixed" else 0
            width = 1 + header["num_speculative_tokens"]
            times = [s.seconds for s in steps_of(events) if s.seconds is not None and _decode_only(
                [(q, samples) for _, q, _, samples in s.requests], width)]
            if k in means or not times:
                raise ValueError(f"MeasuredCost: the trace at K = {k} is given twice or has no finished sampling "
                                 "step (give one recorded trace per K)")
            means[k] = float(np.mean(times))
        return cls(dict(sorted(means.items())))

    def bind(self, plan: ReplayPlan, keep_noise: bool, noise_theta: np.ndarray | None) -> StepSeconds:
        if noise_theta is not None:
            raise ValueError("noise_theta is for a linear cost: MeasuredCost takes its noise from the recorded seconds")
        missing = sorted(set(range(plan.num_speculative_tokens + 1)) - set(self.means))
        if missing:
            raise ValueError(f"MeasuredCost has no trace at K = {missing}: give the traces of none and "
                             f"sparrow-k1..k{plan.num_speculative_tokens}")
        m, top = self.means, self.means[plan.num_speculative_tokens]

        def seconds(i: int, k_of: Callable[[int | None], int], k: int) -> float:
            step = plan.steps[i]
            if not _decode_only([(q, samples) for q, _, samples in step.requests], 1 + plan.num_speculative_tokens):
                return step.seconds
            verify = [m[k_of(source)] for _, _, _, source in step.verify] or [m[k]]
            scale = step.seconds / top if keep_noise else 1.0
            return scale * (0.5 * sum(verify) / len(verify) + 0.5 * m[k])
        return seconds
