"""Paired comparison: Wilcoxon p-values against exact enumeration, bootstrap CI against a NumPy bootstrap."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.metrics.statistics import paired_comparison


def exact_wilcoxon_p(differences):
    """Two-sided exact signed-rank p-value by enumerating all 2^n sign patterns (no ties, no zeros)."""
    ranks = np.argsort(np.argsort(np.abs(differences))) + 1
    observed = ranks[differences > 0].sum()
    centre = len(differences) * (len(differences) + 1) / 4
    patterns = np.array(list(itertools.product([0, 1], repeat=len(differences))))
    w_plus = patterns @ ranks
    return np.mean(np.abs(w_plus - centre) >= abs(observed - centre) - 1e-9)


def test_all_positive_differences():
    result = paired_comparison([1.0, 2.0, 3.0, 4.0, 5.0, 6.5], [0.0] * 6)
    assert result["p_value"] == pytest.approx(2 / 2**6)  # only the all-plus and all-minus patterns are as extreme
    assert result["wilcoxon_statistic"] == 0.0
    assert result["n"] == 6 and result["mean_difference"] == pytest.approx(21.5 / 6)


@pytest.mark.parametrize("seed", range(3))
def test_wilcoxon_p_value_matches_exact_enumeration(seed):
    rng = np.random.default_rng(seed)
    b = rng.random(10)
    a = b + rng.normal(0.1, 0.3, 10)
    result = paired_comparison(a, b)
    assert result["p_value"] == pytest.approx(exact_wilcoxon_p(a - b), abs=1e-12)
    assert result["median_difference"] == pytest.approx(np.median(a - b))


def test_bootstrap_interval_matches_a_numpy_bootstrap_and_is_reproducible():
    rng = np.random.default_rng(11)
    a = rng.normal(0.8, 0.1, 60)
    b = a - rng.normal(0.05, 0.1, 60)
    result = paired_comparison(a, b, seed=3)
    difference = a - b
    resampled = difference[np.random.default_rng(99).integers(0, 60, size=(20000, 60))].mean(axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    # two independent Monte Carlo estimates of the same quantiles (standard error ~ 0.002 here)
    assert result["ci_low"] == pytest.approx(low, abs=0.01) and result["ci_high"] == pytest.approx(high, abs=0.01)
    assert result["ci_low"] < result["mean_difference"] < result["ci_high"]
    assert paired_comparison(a, b, seed=3) == result
    assert paired_comparison(a, b, seed=4)["ci_low"] != result["ci_low"]
    narrow = paired_comparison(a, b, confidence=0.5, seed=3)
    assert result["ci_low"] < narrow["ci_low"] < narrow["ci_high"] < result["ci_high"]


def test_nan_pairs_are_dropped_and_identical_methods_agree():
    result = paired_comparison([0.9, np.nan, 0.7, 0.8], [0.8, 0.5, np.nan, 0.6])
    assert result["n"] == 2 and result["mean_difference"] == pytest.approx(0.15)
    same = paired_comparison([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same["p_value"] == 1.0 and same["ci_low"] == 0.0 and same["ci_high"] == 0.0


def test_invalid_inputs():
    with pytest.raises(InputError, match="a and b: need two flat sequences"):
        paired_comparison([1.0, 2.0], [1.0])
    with pytest.raises(InputError, match="at least 2 pairs"):
        paired_comparison([1.0, np.nan], [0.0, 0.0])
    with pytest.raises(InputError, match="confidence"):
        paired_comparison([1.0, 2.0], [0.0, 0.0], confidence=95)
