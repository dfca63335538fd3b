"""Registration metrics of one MRI–TRUS pair: gland overlap after warping, landmark TRE, deformation regularity,
surface registration error (SRE).

Roles (ARCHITECTURE.md): TRUS is fixed, MRI is moving, and ``transform`` maps a fixed physical point to
the moving physical point (mm, LPS), so the moving gland is brought onto the fixed grid by resampling
with ``transform``, while fixed landmarks are carried to the moving space by ``transform`` itself.
Label channels follow the μ-RegPro layout: channel 0 = gland, channels 1.. = corresponding landmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import SimpleITK as sitk

from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.metrics._image import check_image, check_transform, index_to_physical_matrix
from MRITRUSFusionLib.metrics.jacobian import jacobian_statistics
from MRITRUSFusionLib.metrics.landmarks import landmark_tre_mm, transform_points
from MRITRUSFusionLib.metrics.overlap import dice
from MRITRUSFusionLib.metrics.surface import average_surface_distance_mm, hausdorff95_mm, surface_points_mm

Interpolation = Literal["linear", "nearest"]
Unit = Literal["mm", "vox"]


def warp_mask(
    moving_mask: sitk.Image,
    fixed_reference: sitk.Image,
    transform: sitk.Transform,
    interpolation: Interpolation = "linear",
) -> sitk.Image:
    """The moving mask (``> 0``) resampled onto the grid of ``fixed_reference`` through ``transform``, as UInt8 0/1.

    ``"linear"`` (default): the mask as a 0/1 float image is resampled with linear interpolation and
    thresholded at 0.5 (``>= 0.5`` is foreground), which keeps a sub-voxel shift of the boundary instead of
    snapping it to the nearest voxel. ``"nearest"``: nearest-neighbour resampling of the mask, the usual
    way to carry a label map across. Points mapped outside the moving image are background.
    """
    check_image(moving_mask, "moving_mask")
    check_image(fixed_reference, "fixed_reference")
    check_transform(transform, "transform")
    foreground = moving_mask > 0  # UInt8 0/1 on the moving grid
    if interpolation == "linear":
        fraction = sitk.Resample(
            sitk.Cast(foreground, sitk.sitkFloat32), fixed_reference, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32
        )
        return sitk.Cast(fraction >= 0.5, sitk.sitkUInt8)
    if interpolation == "nearest":
        return sitk.Resample(foreground, fixed_reference, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    raise InputError(f"interpolation: expected 'linear' or 'nearest', got {interpolation!r}")


def surface_registration_error(
    mask: sitk.Image, transform_est: sitk.Transform, transform_true: sitk.Transform, unit: Unit = "mm"
) -> float:
    """Surface registration error (SRE, seed 002): mean over the surface voxels ``p`` of ``mask`` of
    ``||T_est(p) - T_true(p)||``.

    ``mask`` lies in the space the transforms map from (the fixed/TRUS gland); its surface voxels are the
    ones of :func:`~MRITRUSFusionLib.metrics.surface.surface_points_mm` (physical centres, mm, LPS).
    ``unit="mm"`` measures the difference in mm; ``unit="vox"`` expresses each difference vector in voxels
    of the mask's grid (``(D·diag(spacing))⁻¹ (T_est(p) - T_true(p))``, i.e. divided by the spacing along
    each grid axis) before taking its length. An empty mask is an :class:`InputError`.
    """
    points = surface_points_mm(mask)
    if len(points) == 0:
        raise InputError("mask: empty, it has no surface to measure the SRE on")
    difference = transform_points(transform_est, points) - transform_points(transform_true, points)
    if unit == "vox":
        difference = difference @ np.linalg.inv(index_to_physical_matrix(mask)).T
    elif unit != "mm":
        raise InputError(f"unit: expected 'mm' or 'vox', got {unit!r}")
    return float(np.linalg.norm(difference, axis=1).mean())


def surface_registration_error_mm(
    mask: sitk.Image, transform_est: sitk.Transform, transform_true: sitk.Transform
) -> float:
    """SRE in mm: :func:`surface_registration_error` with ``unit="mm"``."""
    return surface_registration_error(mask, transform_est, transform_true, unit="mm")


def registration_metrics(
    fixed_channels: Sequence[sitk.Image],
    moving_channels: Sequence[sitk.Image],
    transform: sitk.Transform,
    transform_true: sitk.Transform | None = None,
    sre_unit: Unit = "mm",
    interpolation: Interpolation = "linear",
) -> dict[str, float | list[float]]:
    """Metrics of ``transform`` (fixed -> moving) on one pair of μ-RegPro label channel lists.

    Keys:

    * ``dice``, ``hd95_mm``, ``asd_mm``: fixed gland (channel 0) against the moving gland warped onto the
      fixed grid by :func:`warp_mask` (``interpolation``), see :mod:`.overlap` and :mod:`.surface`.
    * ``tre_mm`` (list, one per landmark channel 1..), ``tre_mean_mm``, ``tre_median_mm``: present only when
      there are landmark channels; see :mod:`.landmarks`.
    * ``folding_fraction``, ``log_jacobian_std``: only for a non-linear transform (``not transform.IsLinear()``),
      over the whole fixed grid; see :mod:`.jacobian`.
    * ``sre_mm`` (or ``sre_vox`` with ``sre_unit="vox"``): only when ``transform_true`` is given, SRE on the
      fixed gland surface, see :func:`surface_registration_error`.

    The identity ``sitk.Transform()`` gives the values before registration.
    """
    if len(fixed_channels) == 0 or len(fixed_channels) != len(moving_channels):
        raise InputError(
            f"fixed_channels and moving_channels: need the same non-zero number of channels, "
            f"got {len(fixed_channels)} and {len(moving_channels)}"
        )
    check_transform(transform, "transform")
    fixed_gland = fixed_channels[0]
    warped_gland = warp_mask(moving_channels[0], fixed_gland, transform, interpolation)
    metrics: dict[str, float | list[float]] = {
        "dice": dice(warped_gland, fixed_gland),
        "hd95_mm": hausdorff95_mm(warped_gland, fixed_gland),
        "asd_mm": average_surface_distance_mm(warped_gland, fixed_gland),
    }
    if len(fixed_channels) > 1:
        tre = landmark_tre_mm(fixed_channels[1:], moving_channels[1:], transform)
        metrics["tre_mm"] = tre.tolist()
        metrics["tre_mean_mm"] = float(np.mean(tre))
        metrics["tre_median_mm"] = float(np.median(tre))
    if not transform.IsLinear():
        regularity = jacobian_statistics(transform, fixed_gland)
        metrics["folding_fraction"] = regularity["folding_fraction"]
        metrics["log_jacobian_std"] = regularity["log_jacobian_std"]
    if transform_true is not None:
        metrics[f"sre_{sre_unit}"] = surface_registration_error(fixed_gland, transform, transform_true, sre_unit)
    return metrics
