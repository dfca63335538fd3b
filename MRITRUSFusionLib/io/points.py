"""Point lists (biopsy targets, landmarks) in LPS mm: Slicer markups ``.mrk.json`` and ``label,x,y,z`` CSV."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from .atomic import atomic_output, full_suffix

MARKUPS_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
                  "Schema/markups-schema-v1.0.3.json#")
POINT_SUFFIXES = (".mrk.json", ".csv")
CSV_COLUMNS = ("label", "x", "y", "z")

#: Sign flips between RAS and LPS (x and y change sign; the flip is its own inverse).
_RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])


def _read_markups(path: Path) -> tuple[np.ndarray, list[str]]:
    """Control points of every markup in a Slicer ``.mrk.json``, converted to LPS if stored in RAS."""
    try:
        markups = json.loads(path.read_text(encoding="utf-8"))["markups"]
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"points {path}: not a Slicer markups file ({error})") from None
    positions, labels = [], []
    for markup in markups:
        system = markup.get("coordinateSystem", "LPS")
        if system not in ("LPS", "RAS") or markup.get("coordinateUnits", "mm") != "mm":
            raise InputError(f"points {path}: unsupported coordinates {system} "
                             f"{markup.get('coordinateUnits')} (expected LPS or RAS, mm)")
        for index, point in enumerate(markup.get("controlPoints", [])):
            label = str(point.get("label", index + 1))
            position = point.get("position")
            if point.get("positionStatus", "defined") != "defined" or position is None or len(position) != 3:
                raise InputError(f"points {path}: control point {label!r} has no defined position")
            positions.append(np.asarray(position, dtype=float) * (_RAS_TO_LPS if system == "RAS" else 1.0))
            labels.append(label)
    return np.reshape(positions, (-1, 3)), labels


def _read_csv(path: Path) -> tuple[np.ndarray, list[str]]:
    """Rows ``label,x,y,z`` (LPS mm) after a header naming those columns."""
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        missing = set(CSV_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise InputError(f"points {path}: missing column(s) {', '.join(sorted(missing))} "
                             f"(header must be {','.join(CSV_COLUMNS)})")
        try:
            rows = [(row["label"], [float(row[axis]) for axis in "xyz"]) for row in reader]
        except (TypeError, ValueError) as error:
            raise InputError(f"points {path}: line {reader.line_num}: {error}") from None
    return np.reshape([xyz for _, xyz in rows], (-1, 3)), [label for label, _ in rows]


def read_points(path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """Read points as an ``(N, 3)`` float64 array in LPS mm and their N labels.

    Args:
        path: Slicer markups ``.mrk.json`` (``coordinateSystem`` LPS or RAS; RAS is converted by negating
            x and y) or ``.csv`` with header ``label,x,y,z`` in LPS mm.

    Raises:
        InputError: missing file, unknown suffix, malformed content, undefined or non-finite positions.
    """
    path = Path(path)
    suffix = full_suffix(path)
    if suffix not in POINT_SUFFIXES:
        raise InputError(f"points {path}: unknown point format; use one of {', '.join(POINT_SUFFIXES)}")
    if not path.is_file():
        raise InputError(f"points {path}: no such file")
    points, labels = _read_markups(path) if suffix == ".mrk.json" else _read_csv(path)
    if not np.isfinite(points).all():
        raise InputError(f"points {path}: contains NaN or Inf coordinates")
    return points, labels


def _markups_json(points: np.ndarray, labels: Sequence[str]) -> dict:
    control_points = [{"id": str(i + 1), "label": label, "position": point.tolist(), "positionStatus": "defined"}
                      for i, (point, label) in enumerate(zip(points, labels))]
    return {"@schema": MARKUPS_SCHEMA,
            "markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": "mm",
                         "controlPoints": control_points}]}


def write_points(points: np.ndarray, labels: Sequence[str], path: str | os.PathLike, *,
                 overwrite: bool = True) -> Path:
    """Write N points (``(N, 3)``, LPS mm) with N labels as Slicer markups ``.mrk.json`` or ``.csv``.

    Raises:
        InputError: unknown suffix, points not ``(N, 3)`` finite, or a label count other than N.
    """
    path = Path(path)
    suffix = full_suffix(path)
    points = np.asarray(points, dtype=float)
    if suffix not in POINT_SUFFIXES:
        raise InputError(f"{path}: cannot write points here; use one of {', '.join(POINT_SUFFIXES)}")
    if points.ndim != 2 or points.shape[1] != 3 or not np.isfinite(points).all():
        raise InputError(f"{path}: points must be a finite (N, 3) array, got shape {points.shape}")
    if len(labels) != len(points):
        raise InputError(f"{path}: {len(points)} points but {len(labels)} labels")
    with atomic_output(path, overwrite) as tmp:
        if suffix == ".mrk.json":
            tmp.write_text(json.dumps(_markups_json(points, labels), indent=2), encoding="utf-8")
        else:
            with tmp.open("w", newline="", encoding="utf-8") as file:
                writer = csv.writer(file)
                writer.writerow(CSV_COLUMNS)
                writer.writerows([label, *point.tolist()] for label, point in zip(labels, points))
    return path
