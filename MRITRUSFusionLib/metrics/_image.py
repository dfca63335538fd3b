"""Private helpers shared by the metric families: mask arrays, grid checks and the index-to-physical map.

Conventions used throughout :mod:`MRITRUSFusionLib.metrics`:

* A *mask* is a 3D SimpleITK image of any integer (or real) pixel type; voxels ``> 0`` are foreground.
* NumPy arrays obtained from SimpleITK are indexed ``[z, y, x]``; ITK indices, spacing, origin and the
  physical points are ``(x, y, z)``. Physical space is ITK/LPS in millimetres:
  ``point = origin + D @ diag(spacing) @ index``.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from MRITRUSFusionLib.errors import InputError

# Two grids are "the same" when origin and spacing agree to 1e-4 mm and direction cosines to 1e-6
# (rounding in file headers stays far below these; a real mismatch is far above them).
_GRID_ATOL_MM = 1e-4
_DIRECTION_ATOL = 1e-6


def check_image(image: sitk.Image, name: str) -> None:
    """Raise :class:`InputError` unless ``image`` is a scalar 3D SimpleITK image."""
    if not isinstance(image, sitk.Image):
        raise InputError(f"{name}: expected a SimpleITK image, got {type(image).__name__}")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{name}: expected a scalar 3D image, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s)"
        )


def check_transform(transform: sitk.Transform, name: str) -> None:
    """Raise :class:`InputError` unless ``transform`` is a 3D SimpleITK transform."""
    if not isinstance(transform, sitk.Transform):
        raise InputError(f"{name}: expected a SimpleITK transform, got {type(transform).__name__}")
    if transform.GetDimension() != 3:
        raise InputError(f"{name}: expected a 3D transform, got {transform.GetDimension()}D")


def mask_array(mask: sitk.Image, name: str) -> np.ndarray:
    """Boolean ``[z, y, x]`` array of the foreground (``> 0``) of a 3D mask."""
    check_image(mask, name)
    return sitk.GetArrayViewFromImage(mask) > 0


def check_same_grid(a: sitk.Image, b: sitk.Image, name_a: str, name_b: str) -> None:
    """Raise :class:`InputError` unless ``a`` and ``b`` share size, origin, spacing and direction."""
    check_image(a, name_a)
    check_image(b, name_b)
    problems = []
    if a.GetSize() != b.GetSize():
        problems.append(f"size {a.GetSize()} vs {b.GetSize()}")
    if not np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=_GRID_ATOL_MM):
        problems.append(f"spacing {a.GetSpacing()} vs {b.GetSpacing()}")
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=_GRID_ATOL_MM):
        problems.append(f"origin {a.GetOrigin()} vs {b.GetOrigin()}")
    if not np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=_DIRECTION_ATOL):
        problems.append("direction differs")
    if problems:
        raise InputError(f"{name_a} and {name_b} must share one voxel grid: {'; '.join(problems)}")


def index_to_physical_matrix(image: sitk.Image) -> np.ndarray:
    """The 3x3 matrix ``D @ diag(spacing)`` mapping an ITK ``(x, y, z)`` index offset to a physical offset (mm)."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    return direction @ np.diag(image.GetSpacing())


def indices_to_physical(image: sitk.Image, zyx_indices: np.ndarray) -> np.ndarray:
    """Physical LPS points (mm, shape ``(N, 3)``) of NumPy ``[z, y, x]`` voxel indices (shape ``(N, 3)``)."""
    xyz = np.asarray(zyx_indices, dtype=float)[:, ::-1]
    return np.asarray(image.GetOrigin(), dtype=float) + xyz @ index_to_physical_matrix(image).T


def voxel_volume_ml(image: sitk.Image) -> float:
    """Volume of one voxel in millilitres: ``|det(D @ diag(spacing))|`` mm³ / 1000."""
    return float(abs(np.linalg.det(index_to_physical_matrix(image)))) / 1000.0


def as_points(points: np.ndarray, name: str) -> np.ndarray:
    """``points`` as a float ``(N, 3)`` array; :class:`InputError` for any other shape or non-finite values."""
    array = np.asarray(points, dtype=float)
    if array.ndim != 2 or array.shape[1] != 3:
        raise InputError(f"{name}: expected an (N, 3) array of physical points, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name}: points must be finite")
    return array
