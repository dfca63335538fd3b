"""μ-RegPro voxel-unit variants of the registration distances: HD95, ASD and landmark TRE in voxels of the
fixed (TRUS) grid.

μ-RegPro resamples every image to one isotropic grid, so its distances can be read in voxels. Here a
distance "in voxels" is the length of a physical difference vector (mm, LPS) expressed in the index
coordinates of the **fixed image's grid**: ``v_vox = (D·diag(spacing))⁻¹ · v_mm``, i.e. each component along
a grid axis divided by the fixed voxel size along that axis, then the Euclidean length. For an isotropic
fixed grid of spacing ``s`` mm this is exactly ``distance_mm / s``; for an anisotropic grid it weighs each
axis by its own spacing (a 3 mm step along a 3 mm axis is 1 voxel, along a 1 mm axis 3 voxels). The same
convention as :func:`MRITRUSFusionLib.metrics.surface_registration_error` with ``unit="vox"``.

* ``hd95_vox``, ``asd_vox``: HD95 and ASD (definitions of :mod:`MRITRUSFusionLib.metrics.surface`) of the
  fixed gland against the warped moving gland, both on the fixed grid, measured with unit spacing, so the
  surface distances are between voxel indices.
* ``tre_vox`` (per landmark): ``||T(f) - m||`` with the difference vector in fixed-grid voxels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from ..metrics._image import index_to_physical_matrix
from ..metrics.landmarks import centroids_mm, transform_points
from ..metrics.registration import Interpolation, warp_mask
from ..metrics.surface import average_surface_distance_mm, hausdorff95_mm


def mm_to_fixed_voxels(vectors_mm: np.ndarray, fixed_grid: sitk.Image) -> np.ndarray:
    """Physical difference vectors (mm, shape ``(N, 3)``) in index units of ``fixed_grid``: ``(D·diag(s))⁻¹ v``."""
    return np.asarray(vectors_mm, dtype=float).reshape(-1, 3) @ np.linalg.inv(index_to_physical_matrix(fixed_grid)).T


def _unit_spacing(mask: sitk.Image) -> sitk.Image:
    """A copy of ``mask`` with spacing (1, 1, 1) and the same origin and direction."""
    copy = sitk.Image(mask)
    copy.SetSpacing((1.0, 1.0, 1.0))
    return copy


def surface_metrics_vox(
    fixed_gland: sitk.Image,
    moving_gland: sitk.Image,
    transform: sitk.Transform,
    interpolation: Interpolation = "linear",
) -> dict[str, float]:
    """``hd95_vox`` and ``asd_vox`` of the fixed gland against the moving gland warped onto the fixed grid by
    ``transform`` (fixed -> moving, :func:`~MRITRUSFusionLib.metrics.warp_mask`), in fixed-grid voxels."""
    warped = warp_mask(moving_gland, fixed_gland, transform, interpolation)
    fixed, warped = _unit_spacing(sitk.Cast(fixed_gland > 0, sitk.sitkUInt8)), _unit_spacing(warped)
    return {"hd95_vox": hausdorff95_mm(warped, fixed), "asd_vox": average_surface_distance_mm(warped, fixed)}


def landmark_tre_vox(
    fixed_masks: Sequence[sitk.Image], moving_masks: Sequence[sitk.Image], transform: sitk.Transform
) -> np.ndarray:
    """TRE of each landmark pair (centroids, as :func:`~MRITRUSFusionLib.metrics.landmark_tre_mm`) in voxels of
    the grid of the first fixed mask: ``||(D·diag(s))⁻¹ (T(f) - m)||``, shape ``(N,)``."""
    difference = transform_points(transform, centroids_mm(fixed_masks)) - centroids_mm(moving_masks)
    return np.linalg.norm(mm_to_fixed_voxels(difference, fixed_masks[0]), axis=1)
