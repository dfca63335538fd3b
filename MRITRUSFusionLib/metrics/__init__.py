"""Evaluation metrics: overlap, surface distance, landmarks/TRE, Jacobian, registration, segmentation, detection,
summaries and paired statistics.

Every metric is a small pure function of SimpleITK images (masks: ``> 0`` = foreground) or physical points
(mm, ITK/LPS), so spacing, origin and (oblique) direction always count. Units are in the names:
``*_mm`` (millimetres), ``*_ml`` (millilitres), ``*_vox`` (voxels); the rest are dimensionless.
"""

from MRITRUSFusionLib.metrics.detection import (
    DetectionCounts,
    detection_rates,
    lesion_level_counts,
    patient_level_metrics,
    patient_outcome,
    picai_metrics,
    roc_auc,
    sextant_map,
)
from MRITRUSFusionLib.metrics.jacobian import jacobian_determinant, jacobian_statistics
from MRITRUSFusionLib.metrics.landmarks import (
    centroid_mm,
    centroids_mm,
    landmark_tre_mm,
    target_registration_errors_mm,
    transform_points,
)
from MRITRUSFusionLib.metrics.overlap import dice, iou, precision, sensitivity, volume_difference_ml, volume_ml
from MRITRUSFusionLib.metrics.registration import (
    registration_metrics,
    surface_registration_error,
    surface_registration_error_mm,
    warp_mask,
)
from MRITRUSFusionLib.metrics.segmentation import segmentation_metrics
from MRITRUSFusionLib.metrics.statistics import paired_comparison
from MRITRUSFusionLib.metrics.summary import robust_mean, summarize
from MRITRUSFusionLib.metrics.surface import (
    average_surface_distance_mm,
    hausdorff95_mm,
    hausdorff_distance_mm,
    surface_distances_mm,
    surface_points_mm,
)

__all__ = [
    "DetectionCounts",
    "average_surface_distance_mm",
    "centroid_mm",
    "centroids_mm",
    "detection_rates",
    "dice",
    "hausdorff95_mm",
    "hausdorff_distance_mm",
    "iou",
    "jacobian_determinant",
    "jacobian_statistics",
    "landmark_tre_mm",
    "lesion_level_counts",
    "paired_comparison",
    "patient_level_metrics",
    "patient_outcome",
    "picai_metrics",
    "precision",
    "registration_metrics",
    "robust_mean",
    "roc_auc",
    "segmentation_metrics",
    "sensitivity",
    "sextant_map",
    "summarize",
    "surface_distances_mm",
    "surface_points_mm",
    "surface_registration_error",
    "surface_registration_error_mm",
    "target_registration_errors_mm",
    "transform_points",
    "volume_difference_ml",
    "volume_ml",
    "warp_mask",
]
