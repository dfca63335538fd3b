"""ITK transform files: linear transforms in ``.tfm``/``.txt``, anything (displacement, B-spline, composite) in ``.h5``.

A transform maps a fixed-space (TRUS) point to the moving-space (MRI) point, both in LPS mm, so
``sitk.Resample(mri, trus, transform)`` puts the MRI on the TRUS grid.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .atomic import atomic_output, full_suffix
from .volumes import error_reason

#: Suffixes of text transform files, which hold linear transforms only.
LINEAR_SUFFIXES = (".tfm", ".txt")
TRANSFORM_SUFFIXES = LINEAR_SUFFIXES + (".h5",)
TRANSFORM_KINDS = ("linear", "any")


def is_linear(transform: sitk.Transform) -> bool:
    """True if ``transform`` is an affine map of LPS mm (rigid, similarity, affine, ... or a composite of them)."""
    return transform.IsLinear()


def _require_linear(transform: sitk.Transform, name: str) -> None:
    if not is_linear(transform):
        raise InputError(f"{name}: expected a linear (rigid/affine) transform, got a non-linear "
                         f"{transform.GetName()} (displacement field or B-spline)")


def as_affine(transform: sitk.Transform) -> sitk.AffineTransform:
    """The single AffineTransform equal to a linear 3D ``transform`` (a composite is composed in its order).

    The matrix A and translation b of ``x -> A x + b`` (LPS mm) are read off the transform's action on the
    origin and the unit vectors, which composes a composite exactly as ITK applies it (last added first).

    Raises:
        InputError: ``transform`` is not linear.
    """
    _require_linear(transform, "transform")
    offset = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    matrix = np.column_stack([np.asarray(transform.TransformPoint(tuple(axis))) - offset for axis in np.eye(3)])
    return sitk.AffineTransform(matrix.ravel().tolist(), offset.tolist())


def require_kind(transform: sitk.Transform, kind: str, name: str) -> sitk.Transform:
    """Return ``transform`` if it is of ``kind`` (``"linear"`` or ``"any"``).

    Raises:
        InputError: ``kind`` is ``"linear"`` and ``transform`` holds a displacement field or B-spline.
        ValueError: unknown ``kind`` (a programming error).
    """
    if kind not in TRANSFORM_KINDS:
        raise ValueError(f"kind must be one of {TRANSFORM_KINDS}, got {kind!r}")
    if kind == "linear":
        _require_linear(transform, name)
    return transform


def _check_3d(transform: sitk.Transform, name: str) -> None:
    if transform.GetDimension() != 3:
        raise InputError(f"{name}: expected a 3D transform, got {transform.GetDimension()}D {transform.GetName()}")


def write_transform(transform: sitk.Transform, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write a 3D transform as an ITK transform file; return ``path``.

    ``.tfm``/``.txt`` take linear transforms only (a composite is written as one AffineTransform);
    ``.h5`` takes any transform, composite included, as is.

    Raises:
        InputError: another suffix, a 2D transform, or a non-linear transform for a text file.
    """
    path = Path(path)
    suffix = full_suffix(path)
    if suffix not in TRANSFORM_SUFFIXES:
        raise InputError(f"{path}: cannot write a transform here; use one of {', '.join(TRANSFORM_SUFFIXES)}")
    _check_3d(transform, f"transform for {path}")
    if suffix in LINEAR_SUFFIXES:
        if not is_linear(transform):
            raise InputError(f"{path}: a {transform.GetName()} holds a displacement field or B-spline, "
                             f"which {suffix} cannot store; write it to .h5")
        if transform.GetName() == "CompositeTransform":
            transform = as_affine(transform)
    with atomic_output(path, overwrite) as tmp:
        sitk.WriteTransform(transform, str(tmp))
    return path


def read_transform(path: str | os.PathLike, *, name: str = "transform") -> sitk.Transform:
    """Read a 3D ITK transform file (``.tfm``, ``.txt``, ``.h5``, ``.mat``) as its concrete SimpleITK type.

    Raises:
        InputError: missing file, not a transform file, unreadable, or not 3D; the message names ``path``.
    """
    path = Path(path)
    subject = f"{name} {path}"
    if not path.is_file():
        raise InputError(f"{subject}: no such file")
    try:
        transform = sitk.ReadTransform(str(path)).Downcast()
    except RuntimeError as error:
        reason = error_reason(error)
        if "Could not create Transform IO object" in reason:
            reason = f"not an ITK transform file (expected {', '.join(TRANSFORM_SUFFIXES)})"
        raise InputError(f"{subject}: cannot read as a transform: {reason}") from None
    _check_3d(transform, subject)
    return transform
