"""Voxel-overlap metrics of two binary masks on one grid.

Both masks are 3D SimpleITK images (any pixel type, ``> 0`` = foreground) that must share size, origin,
spacing and direction (:class:`~MRITRUSFusionLib.errors.InputError` otherwise). With
TP = |pred ∩ ref|, FP = |pred \\ ref|, FN = |ref \\ pred| counted in voxels:

* Dice (Sørensen) = 2 TP / (2 TP + FP + FN), as in the Dice of seeds 001 (DSC of μ-RegPro) and 003 and
  ``monai.metrics.DiceMetric``; both masks empty -> 1.0 (perfect agreement on "nothing there", where MONAI
  returns nan or, with ``ignore_empty=False``, 1.0).
* IoU (Jaccard) = TP / (TP + FP + FN); both empty -> 1.0.
* Sensitivity (recall) = TP / (TP + FN); reference empty -> nan (undefined).
* Precision (PPV) = TP / (TP + FP); prediction empty -> nan (undefined).
* Signed volume difference = (|pred| - |ref|) · voxel volume, in mL.

Seed 004 (CSAD) reports Dice, sensitivity and precision with these definitions.
"""

from __future__ import annotations

import math

import SimpleITK as sitk

from MRITRUSFusionLib.metrics._image import check_same_grid, mask_array, voxel_volume_ml


def _confusion_counts(pred: sitk.Image, ref: sitk.Image) -> tuple[int, int, int]:
    """(TP, FP, FN) voxel counts of ``pred`` against ``ref``."""
    check_same_grid(pred, ref, "pred", "ref")
    p = mask_array(pred, "pred")
    r = mask_array(ref, "ref")
    tp = int((p & r).sum())
    return tp, int(p.sum()) - tp, int(r.sum()) - tp


def dice(pred: sitk.Image, ref: sitk.Image) -> float:
    """Dice similarity coefficient 2|P∩R| / (|P|+|R|) in [0, 1], voxel counts; 1.0 when both masks are empty."""
    tp, fp, fn = _confusion_counts(pred, ref)
    denominator = 2 * tp + fp + fn
    return 1.0 if denominator == 0 else 2.0 * tp / denominator


def iou(pred: sitk.Image, ref: sitk.Image) -> float:
    """Intersection over union (Jaccard) |P∩R| / |P∪R| in [0, 1], voxel counts; 1.0 when both masks are empty."""
    tp, fp, fn = _confusion_counts(pred, ref)
    union = tp + fp + fn
    return 1.0 if union == 0 else tp / union


def sensitivity(pred: sitk.Image, ref: sitk.Image) -> float:
    """Sensitivity (recall, true-positive rate) |P∩R| / |R| in [0, 1]; nan when ``ref`` is empty."""
    tp, _, fn = _confusion_counts(pred, ref)
    return math.nan if tp + fn == 0 else tp / (tp + fn)


def precision(pred: sitk.Image, ref: sitk.Image) -> float:
    """Precision (positive predictive value) |P∩R| / |P| in [0, 1]; nan when ``pred`` is empty."""
    tp, fp, _ = _confusion_counts(pred, ref)
    return math.nan if tp + fp == 0 else tp / (tp + fp)


def volume_ml(mask: sitk.Image) -> float:
    """Foreground (``> 0``) volume of ``mask`` in millilitres (voxel volume from spacing and direction)."""
    return float(mask_array(mask, "mask").sum()) * voxel_volume_ml(mask)


def volume_difference_ml(pred: sitk.Image, ref: sitk.Image) -> float:
    """Signed volume difference V(pred) - V(ref) in millilitres (voxel volume from spacing and direction)."""
    _, fp, fn = _confusion_counts(pred, ref)
    return (fp - fn) * voxel_volume_ml(ref)
