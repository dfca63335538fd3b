"""Lesion candidates of a tumour probability map: connected components with volume and confidence.

A candidate is a 26-connected component of ``probability >= threshold`` on the probability's own grid (LPS
mm), at least ``min_volume_mm3`` large. Candidates are numbered 1..n by decreasing maximum probability
(ties: larger first), so "lesion 1" is the most confident one.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io import atomic_output, write_json
from ..io.atomic import full_suffix

#: Millilitres per cubic millimetre.
ML_PER_MM3 = 1e-3


@dataclass(frozen=True)
class LesionCandidate:
    """One connected component of the thresholded probability.

    Attributes:
        index: rank, 1 = highest ``max_probability``.
        volume_ml: voxel count × voxel volume, in mL.
        max_probability: largest probability (0..1) inside the component.
        mean_probability: mean probability (0..1) inside the component.
        centroid_lps_mm: centre of mass of the component's voxels, LPS mm.
        voxels: number of voxels.
    """

    index: int
    volume_ml: float
    max_probability: float
    mean_probability: float
    centroid_lps_mm: tuple[float, float, float]
    voxels: int


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float, or :class:`InputError` unless it lies strictly between 0 and 1."""
    if math.isnan(threshold) or not 0.0 < threshold < 1.0:
        raise InputError(f"threshold {threshold}: must lie strictly between 0 and 1")
    return float(threshold)


def lesion_candidates(probability: sitk.Image, threshold: float = 0.5, min_volume_mm3: float = 0.0
                      ) -> tuple[sitk.Image, list[LesionCandidate]]:
    """Connected components of ``probability >= threshold`` as numbered lesion candidates.

    Args:
        probability: 3D float map (0..1) in physical space.
        threshold: probability at or above which a voxel belongs to a candidate.
        min_volume_mm3: components smaller than this (mm³) are dropped; 0 keeps all.

    Returns:
        ``(components, candidates)``: a uint16 map on the grid of ``probability`` where voxels of candidate
        ``k`` hold ``k`` (0 elsewhere), and the candidates ordered by ``index``.
    """
    mask = sitk.Cast(probability >= check_threshold(threshold), sitk.sitkUInt8)
    voxel_mm3 = float(np.prod(probability.GetSpacing()))
    min_voxels = int(np.ceil(max(min_volume_mm3, 0.0) / voxel_mm3))
    components = sitk.RelabelComponent(sitk.ConnectedComponent(mask, True), minimumObjectSize=min_voxels)
    statistics = sitk.LabelIntensityStatisticsImageFilter()
    statistics.Execute(components, sitk.Cast(probability, sitk.sitkFloat32))
    labels = sorted(statistics.GetLabels(),
                    key=lambda v: (-statistics.GetMaximum(v), -statistics.GetNumberOfPixels(v)))
    candidates = [LesionCandidate(index=rank, volume_ml=statistics.GetNumberOfPixels(v) * voxel_mm3 * ML_PER_MM3,
                                  max_probability=float(statistics.GetMaximum(v)),
                                  mean_probability=float(statistics.GetMean(v)),
                                  centroid_lps_mm=tuple(float(c) for c in statistics.GetCentroid(v)),
                                  voxels=int(statistics.GetNumberOfPixels(v)))
                  for rank, v in enumerate(labels, start=1)]
    ranked = sitk.ChangeLabel(components, changeMap={float(v): float(rank) for rank, v in enumerate(labels, 1)})
    ranked = sitk.Cast(ranked, sitk.sitkUInt16)
    ranked.CopyInformation(probability)
    return ranked, candidates


#: Columns of the CSV table: the centroid split into its L, P and S coordinates (mm).
CSV_COLUMNS = ("index", "volume_ml", "max_probability", "mean_probability", "centroid_l_mm", "centroid_p_mm",
               "centroid_s_mm", "voxels")


def _row(candidate: LesionCandidate) -> list:
    return [candidate.index, candidate.volume_ml, candidate.max_probability, candidate.mean_probability,
            *candidate.centroid_lps_mm, candidate.voxels]


def write_lesions(candidates: Sequence[LesionCandidate], path: str | os.PathLike, *, overwrite: bool = True,
                  **context) -> Path:
    """Write ``candidates`` as ``.json`` (``{**context, "lesions": [...]}``) or ``.csv`` (one row each).

    Raises:
        InputError: another suffix.
    """
    suffix = full_suffix(path)
    if suffix == ".json":
        return write_json({**context, "lesions": [asdict(c) for c in candidates]}, path, overwrite)
    if suffix != ".csv":
        raise InputError(f"{path}: lesion candidates are written as .json or .csv")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(_row(candidate) for candidate in candidates)
    with atomic_output(path, overwrite) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    return Path(path)
