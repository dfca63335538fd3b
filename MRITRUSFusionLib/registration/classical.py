"""Classical MRI→TRUS registration with SimpleITK: rigid → affine → B-spline.

Two modes share the same stages:

* **gland-driven** (both gland masks given, as clinical fusion systems work): the signed distance maps
  of the two gland masks are registered with a mean-squares metric on a grid cropped around the TRUS
  gland, initialised by aligning the masks' centres of mass;
* **image-only**: the intensities (smoothed, z-scored) are registered with multi-resolution Mattes mutual
  information on a coarse working grid, initialised by aligning the image centres, with the TRUS field of
  view (non-zero voxels) as the metric mask. Mutual information between TRUS and MRI has spurious optima
  under scaling, so the affine and B-spline stages of this mode take small, few steps from the rigid result.

The result maps a TRUS (fixed) point to the MRI (moving) point: an ``AffineTransform`` for ``rigid`` and
``affine``, and a ``CompositeTransform`` (affine after B-spline) for ``bspline``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import SimpleITK as sitk

from .. import progress
from ..errors import InputError
from ..preprocess import (crop_grid_around_mask, physical_extent, reference_grid, resample_to, signed_distance_mm,
                          zscore)

METHODS = ("rigid", "affine", "bspline")


@dataclass
class StageSettings:
    """Optimiser settings of one stage; shrink factors and smoothing sigmas (mm) per resolution level."""

    iterations: int
    shrink_factors: tuple[int, ...]
    smoothing_mm: tuple[float, ...]
    learning_rate: float = 1.0


@dataclass
class ClassicalOptions:
    """Settings of the classical registration. Lengths in mm."""

    #: Isotropic spacing of the gland-driven working grid (cropped around the TRUS gland).
    working_spacing_mm: float = 1.5
    #: Isotropic spacing of the image-only working grid (the whole TRUS field of view).
    image_spacing_mm: float = 2.0
    #: Margin around the fixed gland of the gland-driven working grid.
    gland_margin_mm: float = 15.0
    #: Signed distance maps are clipped to ± this value, so far-away voxels do not dominate.
    distance_clip_mm: float = 12.0
    #: Gland-driven metric samples only where the TRUS gland surface is nearer than this (mm).
    surface_band_mm: float = 8.0
    #: Spacing of the B-spline control-point grid.
    bspline_grid_spacing_mm: float = 30.0
    #: Largest displacement of a B-spline control point, gland-driven / image-only.
    bspline_max_displacement_mm: float = 10.0
    image_bspline_max_displacement_mm: float = 3.0
    #: Fraction of working-grid voxels sampled by the metric, image-only / gland-driven (the cropped distance
    #: maps are small; sampling as many points as voxels makes the gland-driven result stable across seeds).
    sampling_fraction: float = 0.25
    gland_sampling_fraction: float = 1.0
    histogram_bins: int = 32
    #: Seed of the metric's random sampling; must be non-zero (SimpleITK takes 0 as "seed from the clock").
    seed: int = 1
    #: Evaluate the Mattes MI metric (image-only mode) in one work unit. With several, results differ from run
    #: to run (measured: B-spline coefficients up to 2.5 mm apart on 2 threads); the mean-squares metric of the
    #: gland-driven mode is reproducible on any number of threads. False: faster image-only runs, not repeatable.
    deterministic: bool = True
    rigid: StageSettings = field(default_factory=lambda: StageSettings(200, (4, 2, 1), (2.0, 1.0, 0.0)))
    affine: StageSettings = field(default_factory=lambda: StageSettings(200, (2, 1), (1.0, 0.0)))
    bspline: StageSettings = field(default_factory=lambda: StageSettings(30, (1,), (0.0,)))
    #: Image-only stages (mutual information): a rigid search, then damped affine and B-spline steps.
    image_rigid: StageSettings = field(default_factory=lambda: StageSettings(200, (2, 1), (2.0, 0.0)))
    image_affine: StageSettings = field(default_factory=lambda: StageSettings(30, (2, 1), (2.0, 0.0), 0.1))
    image_bspline: StageSettings = field(default_factory=lambda: StageSettings(20, (1,), (0.0,)))


@dataclass
class _Problem:
    """The two images a stage aligns, on their working grids, with the metric and its mask."""

    fixed: sitk.Image
    moving: sitk.Image
    gland_driven: bool
    fixed_mask: Optional[sitk.Image] = None

    def settings(self, name: str, options: "ClassicalOptions") -> StageSettings:
        """The settings of stage ``name`` (rigid, affine, bspline) in this problem's mode."""
        return getattr(options, name if self.gland_driven else f"image_{name}")


def register_classical(fixed: sitk.Image, moving: sitk.Image, method: str = "bspline",
                       fixed_mask: Optional[sitk.Image] = None, moving_mask: Optional[sitk.Image] = None,
                       options: Optional[ClassicalOptions] = None) -> sitk.Transform:
    """Register ``moving`` (MRI) onto ``fixed`` (TRUS); returns the TRUS → MRI point transform.

    ``method`` is ``rigid``, ``affine`` or ``bspline`` (each includes the stages before it). Gland-driven
    when both masks are given, image-only when neither is.
    """
    if method not in METHODS:
        raise InputError(f"--method {method!r}: classical methods are {', '.join(METHODS)}")
    if (fixed_mask is None) != (moving_mask is None):
        raise InputError("gland-driven registration needs both --fixed-mask and --moving-mask")
    options = options or ClassicalOptions()
    if options.seed == 0:
        raise InputError("classical options: seed 0 would make SimpleITK sample from the clock; use a non-zero seed")
    problem = (_gland_problem(fixed_mask, moving_mask, options) if fixed_mask is not None
               else _image_problem(fixed, moving, options))
    stages = METHODS[: METHODS.index(method) + 1]
    with progress.stage("register", total=len(stages)) as bar:
        linear = _initial_transform(problem)
        linear = _optimise_linear(problem, sitk.Euler3DTransform(linear.GetCenter()), linear,
                                  problem.settings("rigid", options), options)
        bar.advance(message="rigid")
        if "affine" in stages:
            linear = _optimise_linear(problem, sitk.AffineTransform(3), linear, problem.settings("affine", options),
                                      options)
            bar.advance(message="affine")
        result: sitk.Transform = _as_affine(linear)
        if "bspline" in stages:
            result = _optimise_bspline(problem, result, options)
            bar.advance(message="bspline")
    return result


def _gland_problem(fixed_mask: sitk.Image, moving_mask: sitk.Image, options: ClassicalOptions) -> _Problem:
    """Signed distance maps of the glands, the fixed one on a grid cropped around the fixed gland."""
    grid = crop_grid_around_mask(fixed_mask, fixed_mask, options.gland_margin_mm, options.working_spacing_mm)
    fixed_sdm = signed_distance_mm(resample_to(sitk.Cast(fixed_mask > 0, sitk.sitkFloat32), grid) > 0.5,
                                   options.distance_clip_mm)
    moving_sdm = signed_distance_mm(moving_mask, options.distance_clip_mm)
    near_surface = sitk.Cast(sitk.Abs(fixed_sdm) < options.surface_band_mm, sitk.sitkUInt8)
    return _Problem(fixed_sdm, moving_sdm, gland_driven=True, fixed_mask=near_surface)


def _image_problem(fixed: sitk.Image, moving: sitk.Image, options: ClassicalOptions) -> _Problem:
    """Smoothed, z-scored intensities on a coarse grid over the TRUS; the metric is evaluated inside the
    TRUS field of view (non-zero voxels, eroded by one voxel)."""
    spacing = options.image_spacing_mm
    grid = reference_grid(*physical_extent(fixed), spacing, fixed.GetDirection())
    fixed_coarse = resample_to(sitk.SmoothingRecursiveGaussian(sitk.Cast(fixed, sitk.sitkFloat32), spacing / 2), grid)
    field_of_view = sitk.BinaryErode(sitk.Cast(resample_to(fixed, grid) > 0, sitk.sitkUInt8), [1, 1, 1])
    if not np.any(sitk.GetArrayViewFromImage(field_of_view)):
        raise InputError("fixed image has no non-zero voxels to register")
    return _Problem(zscore(fixed_coarse, field_of_view), zscore(moving), gland_driven=False,
                    fixed_mask=sitk.Cast(field_of_view, sitk.sitkUInt8))


def _initial_transform(problem: _Problem) -> sitk.Transform:
    """Translation aligning the gland centres of mass (gland-driven) or the image centres (image-only)."""
    if problem.gland_driven:
        fixed_inside = sitk.Cast(problem.fixed < 0, sitk.sitkUInt8)
        moving_inside = sitk.Cast(problem.moving < 0, sitk.sitkUInt8)
        return sitk.CenteredTransformInitializer(fixed_inside, moving_inside, sitk.Euler3DTransform(),
                                                 sitk.CenteredTransformInitializerFilter.MOMENTS)
    return sitk.CenteredTransformInitializer(problem.fixed, problem.moving, sitk.Euler3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.GEOMETRY)


def _method(problem: _Problem, stage: StageSettings, options: ClassicalOptions) -> sitk.ImageRegistrationMethod:
    """A registration method with the metric of the mode and the multi-resolution schedule of ``stage``."""
    method = sitk.ImageRegistrationMethod()
    if problem.gland_driven:
        method.SetMetricAsMeanSquares()
    else:
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=options.histogram_bins)
        if options.deterministic:
            method.SetNumberOfWorkUnits(1)
    if problem.fixed_mask is not None:
        method.SetMetricFixedMask(problem.fixed_mask)
    fraction = options.gland_sampling_fraction if problem.gland_driven else options.sampling_fraction
    # Random sampling (jittered positions) even at fraction 1: smoother metric than the voxel centres alone.
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(fraction, options.seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel(list(stage.shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(stage.smoothing_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def _optimise_linear(problem: _Problem, transform: sitk.Transform, start: sitk.Transform,
                     stage: StageSettings, options: ClassicalOptions) -> sitk.Transform:
    """Optimise a rigid (Euler) or affine ``transform`` initialised from ``start`` (same centre)."""
    start_affine = _as_affine(start)
    if isinstance(transform, sitk.Euler3DTransform):
        transform.SetCenter(start_affine.GetCenter())
        transform.SetMatrix(start_affine.GetMatrix())
        transform.SetTranslation(start_affine.GetTranslation())
    else:
        transform = sitk.AffineTransform(start_affine)
    method = _method(problem, stage, options)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=stage.learning_rate, minStep=1e-4,
                                                    numberOfIterations=stage.iterations,
                                                    relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(problem.fixed, problem.moving)
    return transform


def _optimise_bspline(problem: _Problem, linear: sitk.AffineTransform, options: ClassicalOptions) -> sitk.Transform:
    """A B-spline refinement on top of ``linear``; returns the composite (linear after B-spline)."""
    extent = np.array(problem.fixed.GetSize()) * np.array(problem.fixed.GetSpacing())
    mesh = [max(int(round(e / options.bspline_grid_spacing_mm)), 1) for e in extent]
    bspline = sitk.BSplineTransformInitializer(problem.fixed, mesh, order=3)
    settings = problem.settings("bspline", options)
    method = _method(problem, settings, options)
    bound = options.bspline_max_displacement_mm if problem.gland_driven else options.image_bspline_max_displacement_mm
    method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=settings.iterations,
                                maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=1000,
                                costFunctionConvergenceFactor=1e7, lowerBound=-bound, upperBound=bound)
    method.SetMovingInitialTransform(linear)
    method.SetInitialTransform(bspline, inPlace=True)
    method.Execute(problem.fixed, problem.moving)
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(linear)
    composite.AddTransform(bspline)  # applied first: T(x) = linear(bspline(x))
    return composite


def _as_affine(transform: sitk.Transform) -> sitk.AffineTransform:
    """The same linear map as an AffineTransform (Euler and affine transforms expose matrix and centre)."""
    linear = transform.Downcast() if hasattr(transform, "Downcast") else transform
    affine = sitk.AffineTransform(3)
    affine.SetCenter(linear.GetCenter())
    affine.SetMatrix(linear.GetMatrix())
    affine.SetTranslation(linear.GetTranslation())
    return affine
