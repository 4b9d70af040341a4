"""Two-sample tests on sampled outputs: does speculative decoding give the target's
distribution?

Two runs draw the same prompt many times (say, with and without speculation). Their output
tokens are compared position by position and jointly over a span of positions with a
chi-square test of homogeneity on a 2 x k table; categories too rare for the chi-square
approximation (expected count under 5 in either run) are pooled into one. A null control
(two runs without speculation, different seeds) tells how often the test cries wolf, and
`detectable_shift` tells the smallest change of distribution it finds at a given sample size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

MIN_EXPECTED = 5.0


def chi2_sf(stat: float, dof: int) -> float:
    """P(X >= stat) for X ~ chi-square with `dof` degrees of freedom."""
    if dof <= 0:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def pooled_table(a: Counter, b: Counter, min_expected: float = MIN_EXPECTED) -> np.ndarray:
    """[2, k] counts of runs `a` and `b`, categories whose expected count is under
    `min_expected` in either run pooled into one last column (dropped if still too rare)."""
    n_a, n_b = sum(a.values()), sum(b.values())
    keys = sorted(set(a) | set(b), key=repr)
    total = n_a + n_b
    kept, pooled = [], np.zeros(2)
    for key in keys:
        col = np.array([a.get(key, 0), b.get(key, 0)], dtype=float)
        expected = col.sum() * np.array([n_a, n_b]) / total
        if expected.min() >= min_expected:
            kept.append(col)
        else:
            pooled += col
    if pooled.sum() > 0:
        expected = pooled.sum() * np.array([n_a, n_b]) / total
        if expected.min() >= min_expected or not kept:
            kept.append(pooled)
        else:
            kept[-1] = kept[-1] + pooled
    return np.stack(kept, axis=1) if kept else np.zeros((2, 0))


def chi_square_homogeneity(a: Counter, b: Counter) -> tuple[float, int, float]:
    """(statistic, degrees of freedom, p-value) of "a and b come from one distribution"."""
    table = pooled_table(a, b)
    if table.shape[1] < 2:
        return 0.0, 0, 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    stat = float(((table - expected) ** 2 / expected).sum())
    dof = table.shape[1] - 1
    return stat, dof, chi2_sf(stat, dof)


def total_variation(a: Counter, b: Counter) -> float:
    """Total variation distance between the two empirical distributions."""
    n_a, n_b = sum(a.values()), sum(b.values())
    return 0.5 * sum(abs(a.get(k, 0) / n_a - b.get(k, 0) / n_b) for k in set(a) | set(b))


@dataclass(frozen=True)
class Comparison:
    """One run against a reference run: per output position and jointly over a span."""

    p_values: dict[str, float]  # "pos 0", ..., "joint 1-5" -> p
    tvd: dict[str, float]  # same keys -> total variation distance
    categories: dict[str, int]  # same keys -> distinct outcomes seen in either run

    @property
    def min_p_corrected(self) -> float:
        """Smallest p-value times the number of tests (Bonferroni), capped at 1."""
        return min(1.0, min(self.p_values.values()) * len(self.p_values))

    def differs(self, alpha: float) -> bool:
        return self.min_p_corrected < alpha

    def summary(self) -> dict:
        return {"min_p_corrected": self.min_p_corrected, "p": self.p_values, "tvd": self.tvd,
                "categories": self.categories}


def _counts(samples: Sequence[Sequence[int]], key) -> Counter:
    return Counter(key(s) for s in samples)


def compare(samples: Sequence[Sequence[int]], reference: Sequence[Sequence[int]],
            joint: tuple[int, int] | None = None) -> Comparison:
    """Compare output token sequences `samples` [N_a][L] with `reference` [N_b][L] at every
    position, and jointly over positions joint[0]..joint[1] (inclusive)."""
    length = min(min(len(s) for s in samples), min(len(s) for s in reference))
    keys: dict[str, object] = {f"pos {i}": (lambda s, i=i: s[i]) for i in range(length)}
    if joint is not None:
        lo, hi = joint
        if not 0 <= lo < hi < length:
            raise ValueError(f"joint span {joint} is outside the {length} output positions")
        keys[f"joint {lo}-{hi}"] = lambda s: tuple(s[lo : hi + 1])
    p, tvd, cats = {}, {}, {}
    for name, key in keys.items():
        a, b = _counts(samples, key), _counts(reference, key)
        p[name] = chi_square_homogeneity(a, b)[2]
        tvd[name] = total_variation(a, b)
        cats[name] = len(set(a) | set(b))
    return Comparison(p, tvd, cats)


def _shifted(probs: np.ndarray, shift: float) -> np.ndarray:
    """`probs` with `shift` of probability moved from its most likely outcome to the rest in
    proportion (a total variation distance of `shift`, the kind of change a rejection
    sampler that accepts or rejects too often makes)."""
    top = int(np.argmax(probs))
    shift = min(shift, probs[top], 1 - probs[top])
    out = probs.copy()
    rest = np.ones_like(probs, dtype=bool)
    rest[top] = False
    out[top] -= shift
    out[rest] += shift * probs[rest] / probs[rest].sum()
    return out


def rejection_rate(probs: np.ndarray, shift: float, sizes: tuple[int, int], alpha: float, trials: int,
                   seed: int = 0) -> float:
    """How often the pooled chi-square test at level `alpha` tells two samples of sizes
    `sizes` apart when one comes from `probs` [k] and the other from `probs` shifted by
    `shift` in total variation."""
    rng = np.random.default_rng(seed)
    other = _shifted(probs, shift)
    hits = 0
    for _ in range(trials):
        a = Counter(dict(enumerate(rng.multinomial(sizes[0], other))))
        b = Counter(dict(enumerate(rng.multinomial(sizes[1], probs))))
        hits += chi_square_homogeneity(+a, +b)[2] < alpha
    return hits / trials


def detectable_shift(reference: Sequence[Hashable], sizes: tuple[int, int], alpha: float,
                     power: float = 0.8, trials: int = 200) -> float:
    """The smallest total variation shift (mass moved off the most likely outcome) that the
    test at level `alpha` detects with probability `power`, between samples of sizes
    `sizes` (shifted, unshifted) of the empirical distribution of `reference` (one outcome
    per sample). Bisection over the shift with simulated samples; 1.0 if none is found."""
    counts = Counter(reference)
    probs = np.array(list(counts.values()), dtype=float) / len(reference)
    if len(probs) < 2:
        return 1.0
    lo, hi = 0.0, min(probs.max(), 1 - probs.max())
    if rejection_rate(probs, hi, sizes, alpha, trials) < power:
        return 1.0
    for _ in range(8):
        mid = (lo + hi) / 2
        if rejection_rate(probs, mid, sizes, alpha, trials) >= power:
            hi = mid
        else:
            lo = mid
    return hi
