"""Bootstrap intervals, paired and independent differences."""

import numpy as np
import pytest
from gendiv import stats


def test_bootstrap_intervals_cover_the_truth_on_a_synthetic_case():
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(100):
        x = rng.normal(0.3, 1.0, size=200)
        _, lo, hi = stats.bootstrap_ci(x, n_boot=300, seed=trial)
        covered += lo <= 0.3 <= hi
    assert 88 <= covered <= 100  # nominal 95%


def test_paired_difference_uses_the_pairing():
    a = np.arange(50, dtype=float)
    b = a - 1.0  # a is always exactly 1 higher, whatever the spread
    d, lo, hi = stats.paired_difference(a, b)
    assert d == lo == hi == 1.0
    with pytest.raises(ValueError, match="equal lengths"):
        stats.paired_difference([1, 2], [1])


def test_difference_ci_of_independent_samples():
    d, lo, hi = stats.difference_ci(np.ones(30), np.zeros(40))
    assert d == lo == hi == 1.0
    assert all(np.isnan(stats.difference_ci([], [1.0])))
