"""Paired comparison of two methods evaluated on the same cases (e.g. Dice of method A vs method B).

Seed 000 reports significance of paired improvements (p < 0.01) with such a test; this module uses the
Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, two-sided, no normality assumption) and a percentile
bootstrap 95 % confidence interval of the mean paired difference (``scipy.stats.bootstrap``, seeded).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import bootstrap, wilcoxon

from MRITRUSFusionLib.errors import InputError


def paired_comparison(
    a: Sequence[float],
    b: Sequence[float],
    confidence: float = 0.95,
    n_resamples: int = 10000,
    seed: int = 0,
) -> dict[str, float | int]:
    """Compare paired values ``a[i]`` and ``b[i]`` of the same cases (differences ``a - b``, in their unit).

    Pairs where either value is nan are dropped. Keys: ``n`` (pairs used), ``mean_difference``,
    ``median_difference``, ``ci_low`` / ``ci_high`` (percentile bootstrap of the mean difference over cases,
    ``n_resamples`` resamples from ``numpy.random.default_rng(seed)``, so reproducible), ``wilcoxon_statistic``
    and ``p_value`` (two-sided Wilcoxon signed-rank test; zero differences dropped, scipy's default). Needs at
    least two pairs.
    """
    first = np.asarray(a, dtype=float)
    second = np.asarray(b, dtype=float)
    if first.ndim != 1 or first.shape != second.shape:
        raise InputError(f"a and b: need two flat sequences of one length, got shapes {first.shape}, {second.shape}")
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence: must lie in (0, 1), got {confidence}")
    keep = ~(np.isnan(first) | np.isnan(second))
    difference = first[keep] - second[keep]
    if len(difference) < 2:
        raise InputError(f"a and b: need at least 2 pairs without nan, got {len(difference)}")
    interval = bootstrap(
        (difference,),
        np.mean,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    # all differences zero: nothing to rank, the methods agree (p = 1); scipy would divide 0 by 0 to get there
    statistic, p_value = (0.0, 1.0) if not difference.any() else wilcoxon(difference)
    return {
        "n": int(len(difference)),
        "mean_difference": float(np.mean(difference)),
        "median_difference": float(np.median(difference)),
        "ci_low": float(interval.low),
        "ci_high": float(interval.high),
        "wilcoxon_statistic": float(statistic),
        "p_value": float(p_value),
    }
