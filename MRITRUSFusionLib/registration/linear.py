"""Linear SimpleITK transforms as 4×4 homogeneous matrices (LPS mm) and back, without torch.

Every function reads a transform through its action on points, so any linear transform works (Euler,
similarity, affine, a composite of linear ones), whatever its centre.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def matrix_to_affine(matrix: np.ndarray) -> sitk.AffineTransform:
    """A 4×4 homogeneous matrix as a SimpleITK ``AffineTransform`` (``x -> M[:3,:3] x + M[:3,3]``)."""
    matrix = np.asarray(matrix, dtype=float)
    return sitk.AffineTransform(matrix[:3, :3].ravel().tolist(), matrix[:3, 3].tolist(), (0.0, 0.0, 0.0))


def linear_matrix(transform: sitk.Transform) -> np.ndarray:
    """4×4 homogeneous matrix of a linear SimpleITK transform, read through its action on points."""
    offset = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    matrix = np.eye(4)
    for column, axis in enumerate(np.eye(3)):
        matrix[:3, column] = np.asarray(transform.TransformPoint(tuple(axis))) - offset
    matrix[:3, 3] = offset
    return matrix


def flatten_linear(first: sitk.Transform, second: sitk.Transform) -> sitk.AffineTransform:
    """The ``AffineTransform`` of ``x -> first(second(x))`` for two linear transforms."""
    return matrix_to_affine(linear_matrix(first) @ linear_matrix(second))
