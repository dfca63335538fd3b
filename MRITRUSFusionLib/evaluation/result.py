"""The result of evaluating a whole dataset: per-case rows, optional per-landmark rows, a summary, montages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .montage import CaseMontage

#: Unit suffixes of metric names (``hd95_mm``, ``tre_rms_vox``, ``volume_difference_ml``).
UNIT_SUFFIXES = ("_mm", "_vox", "_ml")


@dataclass
class EvaluationResult:
    """What an ``evaluate_*_dataset`` function returns and :func:`~.tables.write_outputs` writes.

    Attributes:
        kind: ``"registration"``, ``"segmentation"`` or ``"detection"``.
        rows: one dict per case (per case and structure for segmentation), flat scalar values whose keys
            carry their unit (``*_mm``, ``*_vox``, ``*_ml``; no suffix = dimensionless or a count); the
            per-case CSV.
        summary: dataset-level values, JSON-serialisable (nan allowed here; written as ``null``).
        landmark_rows: registration only, one dict per landmark (``case``, ``landmark``, TRE before/after).
        montages: registration only, a few cases' axial slices for the report.
    """

    kind: str
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    landmark_rows: list[dict[str, Any]] = field(default_factory=list)
    montages: list[CaseMontage] = field(default_factory=list)


def phased(key: str, phase: str) -> str:
    """Column name of metric ``key`` in ``phase`` with the unit kept last: ``hd95_mm`` -> ``hd95_after_mm``,
    ``dice`` -> ``dice_after`` (as ``dice_before``/``tre_before_mm`` of the demo report)."""
    for suffix in UNIT_SUFFIXES:
        if key.endswith(suffix):
            return f"{key[: -len(suffix)]}_{phase}{suffix}"
    return f"{key}_{phase}"


def unphased(column: str, phase: str) -> str | None:
    """Inverse of :func:`phased`: ``hd95_after_mm`` -> ``hd95_mm`` for ``phase="after"``; None if not that phase."""
    for suffix in UNIT_SUFFIXES + ("",):
        tail = f"_{phase}{suffix}"
        if column.endswith(tail) and len(column) > len(tail):
            return column[: -len(tail)] + suffix
    return None
