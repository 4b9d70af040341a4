"""The linear step cost of the draft-length replay (trace_replay.py), fitted to recorded
step traces: T = theta . StepShape.features(K'), every coefficient >= 0."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from sparrow_vllm.analysis.trace_replay import Trace, steps_of

logger = logging.getLogger(__name__)

FEATURES = ("step", "verify tokens/1e3", "verify work/1e6", "prompt tokens/1e3",
            "prompt work/1e6", "K", "K*B")  # StepShape.features, in order


def fit_step_cost(traces: Sequence[Trace]) -> np.ndarray:
    """theta [7] of T = theta . StepShape.features(K'): least squares on relative error
    (weights 1 / seconds^2, no forgetting) over every finished step of `traces`, every
    coefficient >= 0 (each is a cost: a fit free to go negative predicts negative step
    times at K' the traces seldom ran)."""
    rows, seconds, skipped = [], [], 0
    for header, events in traces:
        for step in steps_of(events):
            if step.seconds is None:
                continue
            if step.seconds <= 0:
                skipped += 1
                continue
            rows.append(step.shape(header["num_speculative_tokens"]).features(step.k))
            seconds.append(step.seconds)
    if skipped:
        logger.warning("fit_step_cost: left out %d steps timed at <= 0 s", skipped)
    if len(rows) < len(FEATURES):
        raise ValueError(f"fit_step_cost: {len(rows)} finished steps, at least {len(FEATURES)} needed "
                         "(record longer traces)")
    times = np.array(seconds)
    relative = np.array(rows) / times[:, None]  # (f . theta - s) / s = f / s . theta - 1
    return nonnegative_least_squares(relative, np.ones(len(times)))


def nonnegative_least_squares(a: np.ndarray, b: np.ndarray, tolerance: float = 1e-10) -> np.ndarray:
    """argmin ||a x - b|| over x >= 0 (Lawson and Hanson's active-set method).
    a [rows, n], b [rows] -> x [n]."""
    n = a.shape[1]
    x, passive = np.zeros(n), np.zeros(n, dtype=bool)
    for _ in range(3 * n):
        gradient = a.T @ (b - a @ x)
        if passive.all() or gradient[~passive].max() <= tolerance:
            break
        passive[np.argmax(np.where(passive, -np.inf, gradient))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if z[passive].min() > 0:
                x = z
                break
            blocked = passive & (z <= 0)
            step = np.min(x[blocked] / (x[blocked] - z[blocked]))
            x = x + step * (z - x)
            passive &= x > tolerance
            x[~passive] = 0.0
    return x
