"""The grid a learned registration network sees: a fixed-size box centred on the TRUS, and the pair on it.

Every learned model runs on a grid of ``size`` voxels (i, j, k) at an isotropic ``spacing_mm``, with the TRUS
direction, centred on the physical centre of the TRUS image. Training and inference build it the same way
from the images alone (no masks), so a model trained at 1.5 mm on 64³ sees a 96 mm box around the TRUS
whatever the input grids are. The MRI is resampled onto it through an optional initial transform
(TRUS point → MRI point, e.g. a rigid pre-alignment) and both images are z-scored inside their own field
of view (voxels outside it are 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from ...errors import InputError


def registration_grid(fixed: sitk.Image, size: Sequence[int], spacing_mm: float) -> sitk.Image:
    """An empty float32 grid of ``size`` voxels (i, j, k) at ``spacing_mm`` (mm), with ``fixed``'s direction,
    whose physical centre is the centre of ``fixed``'s voxel box (LPS mm)."""
    if len(size) != 3 or min(size) < 2 or spacing_mm <= 0:
        raise InputError(f"registration grid: expected 3 sizes >= 2 and a positive spacing, got {list(size)} "
                         f"voxels at {spacing_mm} mm")
    centre_index = (np.asarray(fixed.GetSize(), float) - 1) / 2
    centre = np.asarray(fixed.TransformContinuousIndexToPhysicalPoint(centre_index.tolist()))
    direction = np.asarray(fixed.GetDirection(), float).reshape(3, 3)
    half = (np.asarray(size, float) - 1) / 2 * spacing_mm
    grid = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    grid.SetSpacing([float(spacing_mm)] * 3)
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin((centre - direction @ half).tolist())
    return grid


def field_of_view(image: sitk.Image, grid: sitk.Image, transform: Optional[sitk.Transform] = None) -> np.ndarray:
    """Boolean (D, H, W) array: the voxels of ``grid`` whose point ``transform(x)`` falls inside ``image``."""
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    inside = sitk.Resample(ones, grid, transform or sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(inside) > 0


def normalised_on_grid(image: sitk.Image, grid: sitk.Image, transform: Optional[sitk.Transform] = None) -> np.ndarray:
    """``image`` sampled on ``grid`` at ``transform(x)`` (linear), z-scored inside its field of view and 0
    outside it: float32 (D, H, W)."""
    sampled = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), grid, transform or sitk.Transform(),
                            sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(sampled)
    inside = field_of_view(image, grid, transform)
    if not inside.any():
        raise InputError("the MRI and the TRUS do not overlap on the registration grid; give an initial "
                         "transform that brings them together")
    values = array[inside]
    std = float(values.std()) or 1.0
    out = np.zeros_like(array)
    out[inside] = (values - float(values.mean())) / std
    return out


@dataclass
class GridPair:
    """A TRUS/MRI pair on a registration grid, as network input tensors (1, 1, D, H, W) float32."""

    grid: sitk.Image
    fixed: torch.Tensor
    moving: torch.Tensor


def pair_on_grid(fixed: sitk.Image, moving: sitk.Image, size: Sequence[int], spacing_mm: float,
                 initial: Optional[sitk.Transform] = None) -> GridPair:
    """The registration grid of ``fixed`` and both images on it (the MRI through ``initial``)."""
    grid = registration_grid(fixed, size, spacing_mm)
    fixed_array = normalised_on_grid(fixed, grid)
    moving_array = normalised_on_grid(moving, grid, initial)
    return GridPair(grid, torch.from_numpy(fixed_array)[None, None], torch.from_numpy(moving_array)[None, None])
