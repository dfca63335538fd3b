"""Case montages for the registration report: one axial TRUS slice through the fixed gland centroid with the
fixed gland outline and the moving gland warped onto the TRUS grid before and after registration."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..fusion import centroid_index, normalize_intensity, orthogonal_planes
from ..metrics._image import check_same_grid
from ..metrics.registration import warp_mask


@dataclass(frozen=True, eq=False)
class CaseMontage:
    """2D arrays (rows ``v``, columns ``h``) of one axial slice of the fixed (TRUS) grid, ready to draw.

    ``h_mm``/``v_mm`` are pixel-centre coordinates in mm (see :class:`MRITRUSFusionLib.fusion.SlicePlane`),
    ``extent`` the outer pixel edges for ``imshow(origin="lower")``; ``invert_y`` puts anterior up.
    """

    case: str
    slice_index: int
    trus: np.ndarray
    fixed_gland: np.ndarray
    moving_gland_before: np.ndarray
    moving_gland_after: np.ndarray
    h_mm: np.ndarray
    v_mm: np.ndarray
    extent: tuple[float, float, float, float]
    xlabel: str
    ylabel: str
    invert_y: bool


def case_montage(
    case: str,
    fixed_image: sitk.Image,
    fixed_gland: sitk.Image,
    moving_gland: sitk.Image,
    transform: sitk.Transform,
) -> CaseMontage:
    """The axial slice of ``fixed_image`` through the centroid of ``fixed_gland`` (both on the TRUS grid) with
    ``moving_gland`` (MRI grid) warped onto the fixed grid by the identity (before) and by ``transform``
    (after, fixed -> moving as every ITK resampling transform), as :func:`~MRITRUSFusionLib.metrics.warp_mask`
    does for the Dice. The slice lies on the grid of ``fixed_gland``; a TRUS image on another grid is
    resampled onto it (linear, identity). The TRUS intensities are normalised to [0, 1] (1st/99th percentiles).
    """
    try:
        check_same_grid(fixed_image, fixed_gland, "fixed image", "fixed gland")
    except InputError:
        fixed_image = sitk.Resample(fixed_image, fixed_gland, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    axial = orthogonal_planes(fixed_gland, centroid_index(fixed_gland))[0]
    before = warp_mask(moving_gland, fixed_gland, sitk.Transform())
    after = warp_mask(moving_gland, fixed_gland, transform)
    return CaseMontage(
        case=case,
        slice_index=axial.slice_index,
        trus=axial.extract(normalize_intensity(fixed_image)),
        fixed_gland=axial.extract(fixed_gland) > 0,
        moving_gland_before=axial.extract(before) > 0,
        moving_gland_after=axial.extract(after) > 0,
        h_mm=axial.h_mm,
        v_mm=axial.v_mm,
        extent=axial.extent,
        xlabel=axial.xlabel,
        ylabel=axial.ylabel,
        invert_y=axial.invert_y,
    )
