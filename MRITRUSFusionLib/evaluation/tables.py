"""Writing an evaluation: the per-case CSV, the summary JSON and the report PNG, each atomically."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io.atomic import atomic_output
from .report import write_report_png
from .result import EvaluationResult

#: File names :func:`write_outputs` writes into its folder.
OUTPUT_NAMES = {"per_case": "per_case.csv", "per_landmark": "per_landmark.csv", "summary": "summary.json",
                "report": "report.png"}


def json_safe(value: Any) -> Any:
    """``value`` with NumPy scalars/arrays as Python numbers/lists, paths as strings, and non-finite floats
    (nan = undefined, inf = unbounded) as None, so the JSON is strict (no ``NaN`` tokens)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _cell(value: Any) -> Any:
    """CSV cell: floats at full precision (``repr``; ``nan``/``inf`` as such), booleans as 0/1."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return value


def _write_csv_to(rows: Sequence[Mapping[str, Any]], target: Path) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))  # union, first-seen order; absent = empty cell
    with open(target, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)


def _write_json_to(summary: Mapping[str, Any], target: Path) -> None:
    with open(target, "w", encoding="utf-8") as handle:
        json.dump(json_safe(summary), handle, indent=2, allow_nan=False, ensure_ascii=False)
        handle.write("\n")


def write_case_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Write ``rows`` (one dict per case) as a CSV with a header; columns = union of the keys; atomic."""
    with atomic_output(path, overwrite) as tmp:
        _write_csv_to(rows, tmp)
    return Path(path)


def write_summary_json(summary: Mapping[str, Any], path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Write ``summary`` as indented strict JSON (nan/inf as ``null``, see :func:`json_safe`); atomic."""
    with atomic_output(path, overwrite) as tmp:
        _write_json_to(summary, tmp)
    return Path(path)


def write_outputs(result: EvaluationResult, out_dir: str | os.PathLike, overwrite: bool = False) -> dict[str, Path]:
    """Write ``per_case.csv``, ``summary.json`` and ``report.png`` (and ``per_landmark.csv`` for a registration
    with landmarks) into ``out_dir``; return ``{"per_case", "summary", "report"[, "per_landmark"]}`` -> path.

    All or nothing: every file is first written to a temporary sibling and renamed into place only after all
    were written, so a failure leaves no new file behind.

    Raises:
        OutputExistsError: one of the files exists and ``overwrite`` is False (before anything is written).
    """
    out_dir = Path(out_dir)
    keys = ["per_case", "summary", "report"] + (["per_landmark"] if result.landmark_rows else [])
    paths = {key: out_dir / OUTPUT_NAMES[key] for key in keys}
    with contextlib.ExitStack() as stack:
        tmp = {key: stack.enter_context(atomic_output(path, overwrite)) for key, path in paths.items()}
        _write_csv_to(result.rows, tmp["per_case"])
        if "per_landmark" in tmp:
            _write_csv_to(result.landmark_rows, tmp["per_landmark"])
        _write_json_to(result.summary, tmp["summary"])
        write_report_png(result, tmp["report"], overwrite=True)
    return paths
