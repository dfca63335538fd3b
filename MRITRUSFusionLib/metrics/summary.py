"""Aggregation of per-case (or per-landmark) metric values into dataset-level summaries."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from MRITRUSFusionLib.errors import InputError


def _without_nan(values: Iterable[float], name: str) -> np.ndarray:
    """``values`` as a 1D float array with nan removed (inf is kept: an unbounded distance is a value)."""
    array = np.asarray(list(values), dtype=float)
    if array.ndim != 1:
        raise InputError(f"{name}: expected a flat sequence of numbers, got shape {array.shape}")
    return array[~np.isnan(array)]


def summarize(values: Iterable[float]) -> dict[str, float | int]:
    """Mean, standard deviation (sample, ``ddof=1``), median and count ``n`` of ``values``, ignoring nan.

    With no value left the statistics are nan and ``n`` is 0; with one value ``std`` is nan.
    """
    array = _without_nan(values, "values")
    n = len(array)
    return {
        "mean": float(np.mean(array)) if n else math.nan,
        "std": float(np.std(array, ddof=1)) if n > 1 else math.nan,
        "median": float(np.median(array)) if n else math.nan,
        "n": n,
    }


def robust_mean(values: Iterable[float], fraction: float = 0.68, higher_is_better: bool = True) -> float:
    """Mean of the best ``fraction`` of ``values`` (nan ignored), as μ-RegPro's robust metrics (seed 001).

    RDSC = ``robust_mean(dice_values, higher_is_better=True)`` (mean of the highest 68 %),
    RTRE = ``robust_mean(tre_values, higher_is_better=False)`` (mean of the lowest 68 %). The number of values
    kept is ``ceil(fraction * n)`` (at least one); nan when no value is left.
    """
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"fraction: must lie in (0, 1], got {fraction}")
    array = np.sort(_without_nan(values, "values"))
    if len(array) == 0:
        return math.nan
    kept = max(1, math.ceil(round(fraction * len(array), 9)))
    best = array[-kept:] if higher_is_better else array[:kept]
    return float(np.mean(best))
