"""Segmentation metrics of one predicted mask against its reference mask on the same grid."""

from __future__ import annotations

import SimpleITK as sitk

from MRITRUSFusionLib.metrics.overlap import dice, iou, precision, sensitivity, volume_difference_ml
from MRITRUSFusionLib.metrics.surface import average_surface_distance_mm, hausdorff95_mm


def segmentation_metrics(pred: sitk.Image, ref: sitk.Image) -> dict[str, float]:
    """Overlap and surface metrics of ``pred`` against ``ref`` (3D masks on one grid, ``> 0`` = foreground).

    Keys: ``dice``, ``iou``, ``sensitivity``, ``precision`` (voxel counts, see :mod:`.overlap`),
    ``hd95_mm``, ``asd_mm`` (physical mm, see :mod:`.surface`), ``volume_difference_ml`` (signed,
    pred - ref, mL). The empty-mask conventions of those modules apply (nan where a value is undefined).
    """
    return {
        "dice": dice(pred, ref),
        "iou": iou(pred, ref),
        "hd95_mm": hausdorff95_mm(pred, ref),
        "asd_mm": average_surface_distance_mm(pred, ref),
        "volume_difference_ml": volume_difference_ml(pred, ref),
        "sensitivity": sensitivity(pred, ref),
        "precision": precision(pred, ref),
    }
