"""Detection evaluation of a set of cases: PI-CAI metrics of detection maps, and, where gland masks are given,
the lesion- and patient-level rules of seed 000 (:mod:`MRITRUSFusionLib.metrics.detection`).

Inputs, one file per case, ``<case>.nii.gz`` (also ``.nii``, ``.nrrd``, ``.mha``), all of a case on one grid:

* ``labels/``: the reference lesions (``> 0`` = lesion, e.g. the lesion ids of ``fixed_tumour_labels``); the
  cases evaluated are the files of this folder.
* ``predictions/``: detection maps (float, ``>= 0``), each lesion candidate a connected region of one constant
  confidence, as PI-CAI expects (extract candidates from a probability map first); extra files are ignored.
* ``glands/`` (optional): the gland of each case, a 3D mask or a multi-channel label file whose channel 0
  is the gland (``fixed_labels/`` of a DeepReg dataset).

PI-CAI (always): ``auroc``, ``ap``, ``picai_score`` of ``picai_eval.evaluate`` with the challenge defaults
(:func:`MRITRUSFusionLib.metrics.picai_metrics`). Seed 000 (with glands only): the detection map is binarised
at ``threshold`` (a voxel with confidence ``>= threshold`` is predicted tumour), the gland is split into
sextants (:func:`MRITRUSFusionLib.metrics.sextant_map`), and :func:`~MRITRUSFusionLib.metrics.lesion_level_counts`
counts TP/FN lesions and TN/FP sextants per case; the summary pools them (lesion level) and derives the
patient-level outcome of each case, with the patient-level AUC of the per-case score = maximum confidence.
"""

from __future__ import annotations

import os
from typing import Any

import SimpleITK as sitk

from .. import progress
from ..errors import InputError
from ..io import read_label_channels
from ..io.volumes import read_volume
from ..metrics._image import check_same_grid
from ..metrics.detection import (
    DetectionCounts,
    detection_rates,
    lesion_level_counts,
    patient_level_metrics,
    patient_outcome,
    picai_metrics,
    sextant_map,
)
from .predictions import IMAGE_SUFFIXES, find_case_files, list_case_files
from .result import EvaluationResult

#: Default binarisation threshold of the detection maps for the seed-000 rules (confidence >= 0.5 is tumour).
DEFAULT_THRESHOLD = 0.5


def _outcome_name(counts: DetectionCounts) -> str:
    outcome = patient_outcome(counts)
    return next(name for name in ("tp", "fn", "fp", "tn") if getattr(outcome, name))


def evaluate_detection_dataset(
    predictions: str | os.PathLike,
    labels: str | os.PathLike,
    glands: str | os.PathLike | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    min_overlap: float = 0.1,
) -> EvaluationResult:
    """Evaluate the detection maps in ``predictions`` against the lesion labels in ``labels`` (module docstring).

    Args:
        predictions: folder of detection maps ``<case>.nii.gz``, one for every label file.
        labels: folder of reference lesion labels ``<case>.nii.gz``; its files define the cases.
        glands: folder of gland masks ``<case>.nii.gz`` for the seed-000 lesion/patient rules; None: PI-CAI only.
        threshold: detection-map confidence at and above which a voxel counts as predicted tumour for the
            seed-000 rules (must be > 0, so background 0 is never tumour). PI-CAI uses the maps as they are.
        min_overlap: PI-CAI hit criterion, IoU of candidate and lesion (challenge default 0.1).

    Returns:
        :class:`EvaluationResult`: rows ``case``, ``max_confidence``, ``reference_positive`` (and, with glands,
        ``tp``, ``fn``, ``fp``, ``tn``, ``patient_outcome``); summary ``picai`` (and ``threshold``,
        ``lesion_level`` counts and rates, ``patient_level`` rates and ``auc``).

    Raises:
        InputError: no label file, a missing detection map or gland (named), a negative confidence, grids that
            differ, or ``threshold <= 0``.
    """
    if not threshold > 0:
        raise InputError(f"threshold: must be > 0 (confidence 0 is background), got {threshold}")
    label_files = list_case_files(labels, "--labels")
    names = list(label_files)
    maps = find_case_files(predictions, names, IMAGE_SUFFIXES, what="detection map")
    gland_files = find_case_files(glands, names, IMAGE_SUFFIXES, "--glands", "gland mask") if glands else {}
    detections, references, rows, counts = [], [], [], []
    with progress.stage("evaluate detection", total=len(names)) as bar:
        for name in names:
            detection = read_volume(maps[name], name=f"case {name} detection map")
            reference = sitk.Cast(read_volume(label_files[name], name=f"case {name} label") > 0, sitk.sitkUInt8)
            check_same_grid(detection, reference, f"detection map {maps[name]}", f"label {label_files[name]}")
            confidences = sitk.GetArrayViewFromImage(detection)
            row: dict[str, Any] = {"case": name, "max_confidence": float(confidences.max(initial=0.0)),
                                   "reference_positive": int(bool(sitk.GetArrayViewFromImage(reference).any()))}
            if gland_files:
                gland = read_label_channels(gland_files[name], name=f"case {name} gland")[0]
                check_same_grid(gland, reference, f"gland {gland_files[name]}", f"label {label_files[name]}")
                case_counts = lesion_level_counts(detection >= threshold, reference, sextant_map(gland))
                counts.append(case_counts)
                row.update(tp=case_counts.tp, fn=case_counts.fn, fp=case_counts.fp, tn=case_counts.tn,
                           patient_outcome=_outcome_name(case_counts))
            detections.append(detection)
            references.append(reference)
            rows.append(row)
            bar.advance(message=name)
    summary: dict[str, Any] = {
        "kind": "detection", "predictions": str(predictions), "labels": str(labels),
        "glands": str(glands) if glands else None, "num_cases": len(rows),
        "picai": picai_metrics(detections, references, min_overlap=min_overlap),
    }
    if counts:
        pooled = sum(counts, DetectionCounts())
        summary["threshold"] = threshold
        summary["lesion_level"] = {"tp": pooled.tp, "fn": pooled.fn, "fp": pooled.fp, "tn": pooled.tn,
                                   **detection_rates(pooled)}
        summary["patient_level"] = patient_level_metrics(counts, [row["max_confidence"] for row in rows])
    return EvaluationResult("detection", rows, summary)

