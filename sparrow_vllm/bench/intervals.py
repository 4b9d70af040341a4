"""95% bootstrap intervals of medians and of ratios of medians, for benchmarks whose goals
are judged with intervals (never from a handful of requests on a noisy machine), and the
two pieces every bootstrap here shares: the resampled indices and the 95% percentiles."""

from __future__ import annotations

import numpy as np


def bootstrap_picks(n: int, draws: int = 4000, seed: int = 0) -> np.ndarray:
    """[draws, n] indices of `n` samples drawn with replacement, one row per bootstrap draw
    (index every paired array with the same rows to resample them jointly)."""
    return np.random.default_rng(seed).integers(0, n, size=(draws, n))


def ci95(values: np.ndarray) -> list[float]:
    """The 2.5th and 97.5th percentiles of a statistic's bootstrap draws: its 95% interval."""
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def median_ci95(samples: list[float], draws: int = 4000, seed: int = 0) -> list[float]:
    """95% bootstrap interval of the median of `samples` (resampling the samples)."""
    x = np.asarray(samples, dtype=float)
    return ci95(np.median(x[bootstrap_picks(len(x), draws, seed)], axis=1))


def median_ratio_ci95(a: list[float], b: list[float], draws: int = 4000, seed: int = 0,
                      paired: bool = False) -> list[float]:
    """95% bootstrap interval of median(a) / median(b). `paired`: a[i] and b[i] measure the
    same request under two methods, and request indices are resampled jointly (a
    request's own length and content then cancel); otherwise each side independently."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if paired:
        if len(x) != len(y):
            raise ValueError(f"a paired interval needs as many samples on each side, got {len(x)} and {len(y)}")
        picks = bootstrap_picks(len(x), draws, seed)
        ratios = np.median(x[picks], axis=1) / np.median(y[picks], axis=1)
    else:
        rng = np.random.default_rng(seed)
        ratios = (np.median(x[rng.integers(0, len(x), size=(draws, len(x)))], axis=1)
                  / np.median(y[rng.integers(0, len(y), size=(draws, len(y)))], axis=1))
    return ci95(ratios)
