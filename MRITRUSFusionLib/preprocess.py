"""Resampling, cropping, intensity normalisation and distance maps, all in physical space (LPS, mm)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import InputError


def physical_bounding_box(mask: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned (LPS) bounding box of the foreground of ``mask``: (min corner, max corner) in mm."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(mask > 0, sitk.sitkUInt8))
    if not stats.HasLabel(1):
        raise InputError("mask is empty: no foreground voxel to crop around")
    x0, y0, z0, sx, sy, sz = stats.GetBoundingBox(1)
    corners = [mask.TransformIndexToPhysicalPoint((x, y, z))
               for x in (x0, x0 + sx - 1) for y in (y0, y0 + sy - 1) for z in (z0, z0 + sz - 1)]
    corners = np.array(corners)
    return corners.min(axis=0), corners.max(axis=0)


def reference_grid(low_mm: Sequence[float], high_mm: Sequence[float], spacing_mm: float,
                   direction: Optional[Sequence[float]] = None) -> sitk.Image:
    """An empty float32 grid of isotropic ``spacing_mm`` covering the LPS box [low_mm, high_mm].

    With ``direction`` (row-major 3×3) the grid axes follow it and the box is covered in that frame.
    """
    low, high = np.asarray(low_mm, float), np.asarray(high_mm, float)
    rotation = np.eye(3) if direction is None else np.asarray(direction, float).reshape(3, 3)
    corners = np.array([[a, b, c] for a in (low[0], high[0]) for b in (low[1], high[1]) for c in (low[2], high[2])])
    local = corners @ rotation  # coordinates along the grid axes
    local_low, local_high = local.min(axis=0), local.max(axis=0)
    size = np.maximum(np.ceil((local_high - local_low) / spacing_mm).astype(int) + 1, 2)
    grid = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    grid.SetSpacing([float(spacing_mm)] * 3)
    grid.SetDirection(rotation.ravel().tolist())
    grid.SetOrigin((rotation @ local_low).tolist())
    return grid


def crop_grid_around_mask(image: sitk.Image, mask: sitk.Image, margin_mm: float,
                          spacing_mm: Optional[float] = None) -> sitk.Image:
    """A grid with ``image``'s direction covering ``mask``'s foreground plus ``margin_mm`` on every side,
    clipped to ``image``'s extent, at ``spacing_mm`` (default: the finest spacing of ``image``)."""
    low, high = physical_bounding_box(mask)
    image_low, image_high = physical_extent(image)
    low = np.maximum(low - margin_mm, image_low)
    high = np.minimum(high + margin_mm, image_high)
    return reference_grid(low, high, spacing_mm or min(image.GetSpacing()), image.GetDirection())


def physical_extent(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned (LPS) box of the voxel centres of ``image``: (min corner, max corner) in mm."""
    size = np.array(image.GetSize()) - 1
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx])
                        for idx in np.array(np.meshgrid(*[[0, s] for s in size])).reshape(3, -1).T])
    return corners.min(axis=0), corners.max(axis=0)


def resample_to(image: sitk.Image, reference: sitk.Image, transform: Optional[sitk.Transform] = None,
                label: bool = False, default_value: float = 0.0) -> sitk.Image:
    """``image`` sampled on ``reference``'s grid at ``transform(x)`` (linear, or nearest for labels)."""
    interpolator = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    pixel_type = image.GetPixelID() if label else sitk.sitkFloat32
    return sitk.Resample(image, reference, transform or sitk.Transform(), interpolator, default_value, pixel_type)


def zscore(image: sitk.Image, mask: Optional[sitk.Image] = None) -> sitk.Image:
    """Intensities shifted and scaled to zero mean, unit s.d. (within ``mask`` when given), float32."""
    array = sitk.GetArrayViewFromImage(image).astype(np.float32)
    values = array if mask is None else array[sitk.GetArrayViewFromImage(mask) > 0]
    if values.size == 0:
        raise InputError("cannot normalise intensities: the mask is empty")
    std = float(values.std()) or 1.0
    out = sitk.GetImageFromArray((array - float(values.mean())) / std)
    out.CopyInformation(image)
    return out


def signed_distance_mm(mask: sitk.Image, clip_mm: Optional[float] = None) -> sitk.Image:
    """Signed Euclidean distance (mm, float32) to the surface of ``mask``: negative inside, positive
    outside, respecting spacing; optionally clipped to ±``clip_mm``."""
    binary = sitk.Cast(mask > 0, sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(binary)):
        raise InputError("mask is empty: a signed distance map needs a foreground")
    distance = sitk.SignedMaurerDistanceMap(binary, insideIsPositive=False, squaredDistance=False,
                                            useImageSpacing=True)
    if clip_mm is not None:
        distance = sitk.Clamp(distance, lowerBound=-clip_mm, upperBound=clip_mm)
    return sitk.Cast(distance, sitk.sitkFloat32)
