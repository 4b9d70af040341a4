"""95% bootstrap intervals of medians and of ratios of medians, for benchmarks whose goals
are judged with intervals (never from a handful of requests on a noisy machine)."""

from __future__ import annotations

import numpy as np


def median_ci95(samples: list[float], draws: int = 4000, seed: int = 0) -> list[float]:
    """95% bootstrap interval of the median of `samples` (resampling the samples)."""
    x = np.asarray(samples, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(x), size=(draws, len(x)))
    medians = np.median(x[picks], axis=1)
    return [float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))]


def median_ratio_ci95(a: list[float], b: list[float], draws: int = 4000, seed: int = 0,
                      paired: bool = False) -> list[float]:
    """95% bootstrap interval of median(a) / median(b). `paired`: a[i] and b[i] measure the
    same request under two methods, and request indices are resampled jointly (a
    request's own length and content then cancel); otherwise each side independently."""
    rng = np.random.default_rng(seed)
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if paired:
        if len(x) != len(y):
            raise ValueError(f"a paired interval needs as many samples on each side, got {len(x)} and {len(y)}")
        picks = rng.integers(0, len(x), size=(draws, len(x)))
        ratios = np.median(x[picks], axis=1) / np.median(y[picks], axis=1)
    else:
        ratios = (np.median(x[rng.integers(0, len(x), size=(draws, len(x)))], axis=1)
                  / np.median(y[rng.integers(0, len(y), size=(draws, len(y)))], axis=1))
    return [float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))]
