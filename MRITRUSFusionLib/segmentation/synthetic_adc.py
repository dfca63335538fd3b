"""A synthetic ADC-like channel for phantom cases, so two-stream (T2W + ADC) models can be trained on them.

The phantom (:mod:`MRITRUSFusionLib.phantom`) only has a T2W-like MRI. This makes an **ADC-like** image on
the MRI grid — synthetic, not a diffusion model — with the contrasts that matter for tumour segmentation:
tumours have a low apparent diffusion coefficient, the gland an intermediate one, and outside the gland the
ADC follows the T2W brightness (fluid is bright on both), scaled so that the gland's median T2W intensity
maps to the gland's ADC. Like a real ADC map it is blurrier, coarser and
noisier than the T2W: it is smoothed, built on a grid of ``COARSENING`` times the MRI spacing with noise
there, and interpolated back linearly. Values are in 10⁻⁶ mm²/s, clipped at 0.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

#: ADC (10⁻⁶ mm²/s) of the gland outside tumours and of tumours (typical clinical values).
GLAND_ADC, TUMOUR_ADC = 1400.0, 800.0
#: Gaussian smoothing (mm), grid coarsening factor and noise standard deviation (10⁻⁶ mm²/s).
SMOOTHING_MM, COARSENING, NOISE_ADC = 1.5, 2.0, 60.0


def synthetic_adc(mri: sitk.Image, tumour: sitk.Image, gland: sitk.Image, rng: np.random.Generator) -> sitk.Image:
    """An ADC-like float32 image on the grid of ``mri``.

    Args:
        mri: T2W-like MRI (any intensity scale, 2D or 3D).
        tumour: tumour mask (non-zero inside) on the MRI grid, e.g. ``PhantomCase.mri_tumours``.
        gland: gland mask (non-zero inside) on the MRI grid, e.g. ``PhantomCase.mri_labels[0]``.
        rng: source of the noise.

    Returns:
        ADC-like image (10⁻⁶ mm²/s, >= 0) with the size, spacing, origin and direction of ``mri``.
    """
    t2w = sitk.GetArrayFromImage(mri).astype(np.float64)
    in_gland = sitk.GetArrayFromImage(gland) > 0
    in_tumour = sitk.GetArrayFromImage(tumour) > 0
    reference = float(np.median(t2w[in_gland])) if in_gland.any() else 0.0
    if t2w.shape != in_gland.shape or t2w.shape != in_tumour.shape or reference <= 0:
        raise InputError("synthetic ADC: the gland and tumour masks must be on the MRI grid and the gland must "
                         "be non-empty with a positive median MRI intensity")
    adc = GLAND_ADC * t2w / reference
    adc[in_gland] = GLAND_ADC
    adc[in_tumour] = TUMOUR_ADC
    sharp = sitk.GetImageFromArray(adc)
    sharp.CopyInformation(mri)
    smooth = sitk.SmoothingRecursiveGaussian(sharp, SMOOTHING_MM)
    coarse = _coarse_grid(mri)
    low = sitk.Resample(smooth, coarse, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat64, True)
    noisy = sitk.GetArrayFromImage(low) + rng.normal(0.0, NOISE_ADC, size=low.GetSize()[::-1])
    low = sitk.GetImageFromArray(noisy)
    low.CopyInformation(coarse)
    back = sitk.Resample(low, mri, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32, True)
    return sitk.Clamp(back, sitk.sitkFloat32, 0.0)


def _coarse_grid(image: sitk.Image) -> sitk.Image:
    """A grid covering the same region as ``image`` with ``COARSENING`` times its spacing."""
    size = [max(int(np.ceil(n / COARSENING)), 1) for n in image.GetSize()]
    spacing = [s * COARSENING for s in image.GetSpacing()]
    direction = np.array(image.GetDirection()).reshape(image.GetDimension(), image.GetDimension())
    # keep the physical centre: first voxel centre shifted by half the extra spacing along each axis
    shift = direction @ (np.array(spacing) - np.array(image.GetSpacing())) / 2
    grid = sitk.Image(size, sitk.sitkFloat64)
    grid.SetSpacing(spacing)
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin((np.array(image.GetOrigin()) + shift).tolist())
    return grid
