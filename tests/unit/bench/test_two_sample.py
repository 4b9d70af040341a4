"""The two-sample test behind the sampling-exactness tests: its p-values, its pooling, and
its power estimate."""

from collections import Counter

import numpy as np
import pytest

from sparrow_vllm.bench.two_sample import (
    chi2_sf,
    chi_square_homogeneity,
    compare,
    detectable_shift,
    pooled_table,
    rejection_rate,
    total_variation,
)


def test_chi2_sf_known_values():
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, abs=1e-9)
    assert chi2_sf(5.991464547107979, 2) == pytest.approx(0.05, abs=1e-9)
    assert chi2_sf(0.0, 3) == pytest.approx(1.0)
    assert chi2_sf(10.0, 0) == 1.0


def test_rare_categories_are_pooled():
    a = Counter({"x": 500, "y": 480, "r1": 2, "r2": 1, "r3": 3, "r4": 4, "r5": 2, "r6": 2})
    b = Counter({"x": 490, "y": 490, "r1": 3, "r2": 2, "r4": 4, "r5": 3, "r6": 1, "r7": 2})
    table = pooled_table(a, b)
    assert table.shape == (2, 3)  # x, y, and one pooled column
    assert table.sum() == sum(a.values()) + sum(b.values())


def test_chi_square_2x2_by_hand():
    # [[30, 70], [50, 50]]: expected [[40, 60], [40, 60]]; statistic 2 * (100/40 + 100/60)
    stat, dof, p = chi_square_homogeneity(Counter(a=30, b=70), Counter(a=50, b=50))
    assert dof == 1
    assert stat == pytest.approx(2 * (100 / 40 + 100 / 60))
    assert p == pytest.approx(chi2_sf(stat, 1))


def test_compare_separates_different_and_keeps_same():
    rng = np.random.default_rng(0)
    p = [0.6, 0.3, 0.1]
    same_a = rng.choice(3, size=(2000, 4), p=p).tolist()
    same_b = rng.choice(3, size=(2000, 4), p=p).tolist()
    other = rng.choice(3, size=(2000, 4), p=[0.45, 0.4, 0.15]).tolist()
    assert not compare(same_a, same_b, joint=(1, 3)).differs(1e-3)
    differs = compare(other, same_b, joint=(1, 3))
    assert differs.differs(1e-3)
    assert differs.tvd["pos 0"] == pytest.approx(0.15, abs=0.04)
    with pytest.raises(ValueError, match="outside"):
        compare(same_a, same_b, joint=(2, 9))


def test_total_variation():
    assert total_variation(Counter(a=1, b=1), Counter(a=2)) == pytest.approx(0.5)


def test_power_grows_with_the_shift_and_detectable_shift_is_where_power_is_reached():
    probs = np.array([0.6, 0.25, 0.1, 0.05])
    sizes = (1000, 1000)
    assert rejection_rate(probs, 0.0, sizes, 1e-3, trials=200) < 0.02  # the false-alarm rate
    assert rejection_rate(probs, 0.15, sizes, 1e-3, trials=100) > 0.95
    reference = [0] * 600 + [1] * 250 + [2] * 100 + [3] * 50
    shift = detectable_shift(reference, sizes, 1e-3, trials=100)
    assert 0.02 < shift < 0.15
    assert rejection_rate(probs, shift, sizes, 1e-3, trials=100, seed=1) >= 0.6
    assert detectable_shift([0] * 100, sizes, 1e-3) == 1.0  # one outcome: nothing to shift
