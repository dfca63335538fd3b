"""Tumour detection metrics: lesion- and patient-level rules of seed 000, and the PI-CAI ranking metrics.

**Lesion level (seed 000, §3.5), per patient**, from a binary predicted tumour mask, the reference tumour
mask and a gland divided into segments (sextants, :func:`sextant_map`), all on one grid:

* A reference *lesion* is a 26-connected component of the reference mask (the connectivity picai_eval
  uses). It is a true positive (TP) when the predicted mask covers at least 1 % of its voxels, a false
  negative (FN) otherwise.
* A gland segment is *reference negative* when less than 1 % of its voxels are reference tumour. A
  reference-negative segment is a true negative (TN) when at least 99 % of its voxels are predicted normal
  (predicted tumour covers at most 1 % of it), a false positive (FP) otherwise. Reference-positive segments
  take no part in TN/FP: their cancer is counted lesion by lesion above.

TP/FN count lesions and TN/FP count segments, as in the seed; :func:`detection_rates` turns the counts
into sensitivity, specificity, PPV, NPV and accuracy.

**Patient level (seed 000)**: a patient with reference lesions is TP when at least one of them is
detected, FN otherwise. The seed leaves patients without lesions unstated; here such a patient is FP when
any of its segments is FP and TN otherwise (the same 1 % tolerance as the segments).
:func:`patient_level_metrics` adds the patient-level AUC of a per-patient score (e.g. the maximum tumour
probability).

**PI-CAI** (:func:`picai_metrics`): the PI-CAI challenge's case-level AUROC, lesion-level average precision
(AP) and ranking score (AUROC + AP) / 2, computed by ``picai_eval.evaluate`` itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.stats import mannwhitneyu

from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.metrics._image import check_same_grid, indices_to_physical, mask_array

_LESION_STRUCTURE = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity, as picai_eval
_PERCENT = 1  # the seed's 1 % thresholds, compared in integer voxel counts (100 * part vs 1 * whole)


@dataclass(frozen=True)
class DetectionCounts:
    """Counts of true/false positives/negatives; add instances to pool patients."""

    tp: int = 0
    fn: int = 0
    fp: int = 0
    tn: int = 0

    def __add__(self, other: DetectionCounts) -> DetectionCounts:
        return DetectionCounts(self.tp + other.tp, self.fn + other.fn, self.fp + other.fp, self.tn + other.tn)


def sextant_map(gland: sitk.Image) -> sitk.Image:
    """Label image (UInt8, gland grid) dividing the gland (``> 0``) into six segments, 0 outside the gland.

    Split in physical LPS space, so the image orientation does not matter: right/left at the middle of the
    gland's extent along x (L is +x; voxel centres on the middle go right), and base/mid/apex as three
    equal-length thirds of its extent along z (S is +z; the base is superior). Labels: 1 right base,
    2 right mid, 3 right apex, 4 left base, 5 left mid, 6 left apex.
    """
    inside = mask_array(gland, "gland")
    if not inside.any():
        raise InputError("gland: empty, it cannot be divided into sextants")
    indices = np.argwhere(inside)
    points = indices_to_physical(gland, indices)
    x, z = points[:, 0], points[:, 2]
    left = x > (x.min() + x.max()) / 2
    cuts = z.min() + (z.max() - z.min()) * np.array([1 / 3, 2 / 3])
    base_mid_apex = 2 - np.digitize(z, cuts)  # z above both cuts -> 0 (base), below both -> 2 (apex)
    labels = np.zeros(inside.shape, np.uint8)
    labels[tuple(indices.T)] = 1 + 3 * left + base_mid_apex
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(gland)
    return image


def lesion_level_counts(pred: sitk.Image, ref: sitk.Image, segments: sitk.Image) -> DetectionCounts:
    """Lesion-level TP/FN (reference lesions) and TN/FP (reference-negative segments) of one patient.

    ``pred`` and ``ref`` are tumour masks (``> 0``), ``segments`` a label image of gland segments
    (1.., 0 = outside, e.g. :func:`sextant_map`); all share one grid. Rules in the module docstring.
    """
    check_same_grid(pred, ref, "pred", "ref")
    check_same_grid(segments, ref, "segments", "ref")
    predicted = mask_array(pred, "pred")
    reference = mask_array(ref, "ref")
    lesions, n_lesions = ndimage.label(reference, structure=_LESION_STRUCTURE)
    lesion_sizes = np.bincount(lesions.ravel(), minlength=n_lesions + 1)[1:]
    lesion_hits = np.bincount(lesions[predicted], minlength=n_lesions + 1)[1:]
    detected = 100 * lesion_hits >= _PERCENT * lesion_sizes
    tp = int(detected.sum())

    segment_labels = sitk.GetArrayFromImage(segments).astype(np.int64)
    if segment_labels.min() < 0:
        raise InputError("segments: labels must be 0 (outside) or positive")
    segment_sizes = np.bincount(segment_labels.ravel())
    cancer = np.bincount(segment_labels[reference], minlength=len(segment_sizes))
    called = np.bincount(segment_labels[predicted], minlength=len(segment_sizes))
    present = segment_sizes > 0
    present[0] = False
    negative = present & (100 * cancer < _PERCENT * segment_sizes)
    normal = 100 * called <= _PERCENT * segment_sizes
    tn = int((negative & normal).sum())
    return DetectionCounts(tp=tp, fn=n_lesions - tp, fp=int(negative.sum()) - tn, tn=tn)


def _ratio(numerator: int, denominator: int) -> float:
    return math.nan if denominator == 0 else numerator / denominator


def detection_rates(counts: DetectionCounts) -> dict[str, float]:
    """Sensitivity TP/(TP+FN), specificity TN/(TN+FP), PPV TP/(TP+FP), NPV TN/(TN+FN), accuracy (TP+TN)/all;
    nan where a denominator is 0."""
    tp, fn, fp, tn = counts.tp, counts.fn, counts.fp, counts.tn
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "accuracy": _ratio(tp + tn, tp + fn + fp + tn),
    }


def patient_outcome(counts: DetectionCounts) -> DetectionCounts:
    """One patient's patient-level outcome (a single 1 in tp, fn, fp or tn) from its lesion-level counts."""
    if counts.tp + counts.fn > 0:
        return DetectionCounts(tp=1) if counts.tp > 0 else DetectionCounts(fn=1)
    return DetectionCounts(fp=1) if counts.fp > 0 else DetectionCounts(tn=1)


def roc_auc(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve: probability that a positive outscores a negative (ties count one half),
    i.e. the Mann–Whitney U statistic / (n_pos · n_neg); nan without positives or negatives."""
    positive = np.asarray(labels, dtype=bool)
    values = np.asarray(scores, dtype=float)
    if positive.shape != values.shape or positive.ndim != 1:
        raise InputError(
            f"labels and scores: need two flat sequences of one length, got {positive.shape} and {values.shape}"
        )
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    return float(mannwhitneyu(values[positive], values[~positive]).statistic) / (n_pos * n_neg)


def patient_level_metrics(case_counts: Sequence[DetectionCounts], scores: Sequence[float]) -> dict[str, float]:
    """Patient-level sensitivity, specificity, PPV, NPV, accuracy (from :func:`patient_outcome` of each
    patient's lesion-level counts) and ``auc`` of ``scores`` (one per patient, higher = more suspicious)
    against "patient has a reference lesion"."""
    if len(case_counts) != len(scores):
        raise InputError(f"case_counts and scores: {len(case_counts)} vs {len(scores)} patients")
    outcomes = sum((patient_outcome(c) for c in case_counts), DetectionCounts())
    has_lesion = [c.tp + c.fn > 0 for c in case_counts]
    return {**detection_rates(outcomes), "auc": roc_auc(has_lesion, scores)}


def picai_metrics(
    detection_maps: Sequence[sitk.Image],
    labels: Sequence[sitk.Image],
    min_overlap: float = 0.1,
    overlap_func: str = "IoU",
) -> dict[str, float]:
    """PI-CAI metrics of detection maps against binary lesion labels, through ``picai_eval.evaluate``.

    Each detection map (non-negative float image) holds lesion candidates, each a connected component of
    one constant confidence; each label (``> 0`` = lesion) shares its grid. Defaults are the PI-CAI
    challenge's (a candidate hits a lesion at IoU >= 0.1; case confidence = maximum of the map). Keys:
    ``auroc`` (case level), ``ap`` (lesion level), ``picai_score`` = (auroc + ap) / 2, ``num_cases``,
    ``num_lesions``. Needs the ``picai_eval`` package.
    """
    from picai_eval import evaluate  # imported here: heavy (pandas, scikit-learn) and needed only here

    if len(detection_maps) != len(labels) or len(labels) == 0:
        raise InputError(
            f"detection_maps and labels: need the same non-zero count, got {len(detection_maps)} and {len(labels)}"
        )
    y_det, y_true = [], []
    for i, (detection, label) in enumerate(zip(detection_maps, labels)):
        check_same_grid(detection, label, f"detection_maps[{i}]", f"labels[{i}]")
        y_det.append(sitk.GetArrayFromImage(detection).astype(np.float32))
        y_true.append(mask_array(label, f"labels[{i}]").astype(np.int32))
        if y_det[-1].min() < 0:
            raise InputError(f"detection_maps[{i}]: confidences must be non-negative")
    result = evaluate(
        y_det=y_det, y_true=y_true, min_overlap=min_overlap, overlap_func=overlap_func, num_parallel_calls=1
    )
    return {
        "auroc": float(result.auroc),
        "ap": float(result.AP),
        "picai_score": float(result.score),
        "num_cases": int(result.num_cases),
        "num_lesions": int(result.num_lesions),
    }
