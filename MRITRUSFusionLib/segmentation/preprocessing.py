"""Bring an image to a model's input geometry and intensity scale (and back), in physical space (LPS, mm)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

#: Normalisations a model may declare.
NORMALISATIONS = ("zscore-foreground", "zscore")
#: Fewest foreground voxels for foreground statistics; below it the whole image is used.
_MIN_FOREGROUND_VOXELS = 64


def model_grid(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """An empty float32 grid of isotropic ``spacing_mm`` covering the physical extent of ``image``.

    Same direction as ``image``; along each image axis, as many ``spacing_mm`` voxels as needed to cover
    ``size × spacing`` (mm), centred on the image: the two grids share their centre, so no voxel centre of
    either lies more than half a model voxel outside the other (no output voxel is interpolated from
    padding). At ``image``'s own spacing the grid is ``image``'s grid.
    """
    size_in, spacing_in = np.asarray(image.GetSize()), np.asarray(image.GetSpacing())
    size = np.maximum(1, np.ceil(size_in * spacing_in / spacing_mm - 1e-6)).astype(int)
    shift = ((size_in - 1) * spacing_in - (size - 1) * spacing_mm) / 2.0  # mm along each image axis
    direction = np.reshape(image.GetDirection(), (3, 3))
    grid = sitk.Image([int(n) for n in size], sitk.sitkFloat32)
    grid.SetSpacing([float(spacing_mm)] * 3)
    grid.SetOrigin([float(v) for v in np.asarray(image.GetOrigin()) + direction @ shift])
    grid.SetDirection(image.GetDirection())
    return grid


def same_grid(a: sitk.Image, b: sitk.Image, atol_mm: float = 1e-6) -> bool:
    """Whether ``a`` and ``b`` share size, spacing, origin and direction."""
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=atol_mm)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=atol_mm)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-9))


def resample_onto(image: sitk.Image, reference: sitk.Image, interpolator: int = sitk.sitkLinear,
                  default_value: float = 0.0) -> sitk.Image:
    """``image`` sampled on the grid of ``reference`` (identity transform: same physical points).

    Returns ``image`` itself when the grids already agree. Points outside ``image`` get ``default_value``.
    """
    if same_grid(image, reference):
        return image
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, float(default_value),
                         image.GetPixelID())


def to_model_spacing(image: sitk.Image, spacing_mm: float, interpolator: int = sitk.sitkLinear) -> sitk.Image:
    """``image`` (float32) resampled onto :func:`model_grid` (``spacing_mm`` isotropic, same extent)."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    return resample_onto(image, model_grid(image, spacing_mm), interpolator)


def normalise(array: np.ndarray, method: str = "zscore-foreground") -> np.ndarray:
    """Intensity-normalised float32 copy of ``array``.

    ``zscore``: (x - mean) / std over all voxels. ``zscore-foreground``: mean and std over voxels > 0 (the
    TRUS field of view; outside it the image is 0), applied to every voxel, so the outside becomes one
    constant below the tissue values and statistics do not depend on how much empty space surrounds the
    fan.
    """
    array = np.asarray(array, dtype=np.float32)
    if method not in NORMALISATIONS:
        raise InputError(f"normalisation '{method}': unknown; expected one of {', '.join(NORMALISATIONS)}")
    values = array
    if method == "zscore-foreground":
        foreground = array[array > 0]
        if foreground.size >= _MIN_FOREGROUND_VOXELS:
            values = foreground
    mean, std = float(values.mean()), float(values.std())
    return ((array - mean) / max(std, 1e-6)).astype(np.float32)
