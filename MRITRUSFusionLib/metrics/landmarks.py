"""Landmark positions and target registration error (TRE), in millimetres of physical (LPS) space.

Contract (ARCHITECTURE.md, μ-RegPro as used by seed 001): a landmark's position is the centroid, in
physical space, of its mask; TRE of a landmark pair is the Euclidean distance ``||T(f) - m||`` in mm
between the fixed (TRUS) landmark ``f`` mapped by the registration transform ``T`` (fixed -> moving, as
every ITK resampling transform) and the corresponding moving (MRI) landmark ``m``. Seed 001 aggregates
per-landmark TREs by their root mean square; this module returns the per-landmark distances and leaves
the aggregation (mean, median, RMS, robust mean) to the caller.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.metrics._image import as_points, check_transform, mask_array


def centroid_mm(mask: sitk.Image) -> np.ndarray:
    """Physical LPS centroid (mm, shape ``(3,)``) of the foreground (``> 0``) voxels of ``mask``.

    The mean voxel index is a continuous index mapped by ``origin + D·diag(spacing)·index``
    (``TransformContinuousIndexToPhysicalPoint``), which equals the mean of the voxel centres because the
    map is affine. An empty mask is an :class:`InputError`.
    """
    foreground = mask_array(mask, "mask")
    if not foreground.any():
        raise InputError("mask: landmark mask is empty, it has no centroid")
    mean_xyz = np.argwhere(foreground).mean(axis=0)[::-1]
    return np.array(mask.TransformContinuousIndexToPhysicalPoint(mean_xyz.tolist()), dtype=float)


def centroids_mm(masks: Sequence[sitk.Image]) -> np.ndarray:
    """Physical LPS centroids (mm, shape ``(N, 3)``) of ``N`` landmark masks, in order."""
    points = np.empty((len(masks), 3))
    for i, mask in enumerate(masks):
        try:
            points[i] = centroid_mm(mask)
        except InputError as error:
            raise InputError(f"masks[{i}]: {error}") from None
    return points


def transform_points(transform: sitk.Transform, points: np.ndarray) -> np.ndarray:
    """Map physical points (mm, shape ``(N, 3)``) through ``transform`` (``TransformPoint`` of each)."""
    check_transform(transform, "transform")
    array = as_points(points, "points")
    return np.array([transform.TransformPoint(tuple(p)) for p in array], dtype=float).reshape(-1, 3)


def target_registration_errors_mm(
    fixed_points: np.ndarray, moving_points: np.ndarray, transform: sitk.Transform
) -> np.ndarray:
    """TRE in mm of each landmark pair, shape ``(N,)``: ``||T(fixed_i) - moving_i||`` (fixed -> moving)."""
    fixed = as_points(fixed_points, "fixed_points")
    moving = as_points(moving_points, "moving_points")
    if fixed.shape != moving.shape:
        raise InputError(f"fixed_points and moving_points: {len(fixed)} vs {len(moving)} points, pairs must match")
    return np.linalg.norm(transform_points(transform, fixed) - moving, axis=1)


def landmark_tre_mm(
    fixed_masks: Sequence[sitk.Image], moving_masks: Sequence[sitk.Image], transform: sitk.Transform
) -> np.ndarray:
    """TRE in mm, shape ``(N,)``, of corresponding fixed and moving landmark masks (centroid to centroid)."""
    if len(fixed_masks) != len(moving_masks):
        raise InputError(
            f"fixed_masks and moving_masks: {len(fixed_masks)} vs {len(moving_masks)} landmarks, pairs must match"
        )
    return target_registration_errors_mm(centroids_mm(fixed_masks), centroids_mm(moving_masks), transform)
