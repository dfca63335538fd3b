"""Applying a registration result: volumes and label maps onto the TRUS grid, MRI points into TRUS space.

The transform maps a TRUS (fixed) point to the MRI (moving) point (ITK resampling convention, LPS mm), so
images are *pulled* through it (:func:`warp_image`), while MRI points are *pushed* into TRUS space through
its inverse (:func:`map_points_to_fixed`): linear transforms are inverted exactly, deformable ones by a
fixed-point iteration on the transform itself.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..preprocess import resample_to

#: Largest residual |T(x) - p| (mm) accepted when inverting a deformable transform at a point.
INVERSION_TOLERANCE_MM = 1e-3


def warp_image(moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform, label: bool = False) -> sitk.Image:
    """``moving`` resampled onto ``reference``'s grid through ``transform`` (reference point → moving point).

    Images are interpolated linearly (float32); label maps by nearest neighbour, keeping their pixel type.
    Points mapped outside ``moving`` are 0.
    """
    return resample_to(moving, reference, transform, label=label)


def _apply(transform: sitk.Transform, points: np.ndarray) -> np.ndarray:
    return np.array([transform.TransformPoint([float(v) for v in p]) for p in points], dtype=float)


def _local_linear_inverse(transform: sitk.Transform, point: np.ndarray, step_mm: float = 1.0) -> np.ndarray:
    """Inverse of the Jacobian (3×3) of ``transform`` at ``point``, by central differences of ``step_mm``."""
    offsets = np.eye(3) * step_mm
    forward = _apply(transform, point + offsets)
    backward = _apply(transform, point - offsets)
    jacobian = (forward - backward).T / (2 * step_mm)
    return np.linalg.inv(jacobian)


def map_points_to_fixed(transform: sitk.Transform, moving_points_mm: np.ndarray, max_iterations: int = 50) -> np.ndarray:
    """Positions in fixed (TRUS) space of points given in moving (MRI) space: ``x`` with ``T(x) = p``.

    ``moving_points_mm`` is an (N, 3) array, LPS mm. Linear transforms are inverted in closed form; other
    transforms by Newton iterations from the inverse of their local Jacobian. Raises ``InputError`` when a
    point cannot be inverted to :data:`INVERSION_TOLERANCE_MM` (e.g. it lies outside the transform's field).
    """
    points = np.asarray(moving_points_mm, dtype=float).reshape(-1, 3)
    if points.size == 0:
        return points
    try:
        return _apply(transform.GetInverse(), points)
    except RuntimeError:
        pass  # not invertible in closed form (displacement field, B-spline, composite of those)
    result = np.empty_like(points)
    for i, target in enumerate(points):
        result[i] = _invert_point(transform, target, max_iterations)
    return result


def _invert_point(transform: sitk.Transform, target: np.ndarray, max_iterations: int) -> np.ndarray:
    guess = target.copy()
    inverse_jacobian = _local_linear_inverse(transform, guess)
    guess = guess + inverse_jacobian @ (target - _apply(transform, guess[None])[0])
    for _ in range(max_iterations):
        residual = target - _apply(transform, guess[None])[0]
        if np.linalg.norm(residual) < INVERSION_TOLERANCE_MM:
            return guess
        inverse_jacobian = _local_linear_inverse(transform, guess)
        guess = guess + inverse_jacobian @ residual
    raise InputError(f"point {np.round(target, 2).tolist()} (mm): the transform could not be inverted there "
                     f"(residual {np.linalg.norm(residual):.3g} mm); is it inside the registered region?")
