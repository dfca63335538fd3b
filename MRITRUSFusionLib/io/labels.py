"""Label maps: 3D integer label maps and multi-channel binary masks (4D, channel 0 = gland, 1.. = landmarks).

A multi-channel label file holds C binary masks on one 3D grid: 4D ``(x, y, z, C)`` as in the μ-RegPro and
DeepReg data (NIfTI), or a 3D image with C components per voxel (NRRD ``kinds: vector``). Each channel is
returned as its own 3D ``uint8`` image (0/1) carrying the 3D origin, spacing and direction (LPS mm).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .atomic import full_suffix
from .volumes import check_finite, check_volume, error_reason, read_image, write_volume

#: Suffixes :func:`write_label_channels` writes (4D NIfTI, or NRRD with one vector component per channel).
CHANNEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd")


def _binary(image: sitk.Image) -> sitk.Image:
    """0/1 ``uint8`` mask of the voxels above 0.5 (float masks from interpolation or float64 files)."""
    return sitk.Cast(image > 0.5, sitk.sitkUInt8)


def _split_4d(image: sitk.Image, subject: str) -> list[sitk.Image]:
    """The 3D volumes along the 4th axis; each gets the 3×3 block of the 4D direction."""
    size = list(image.GetSize())
    try:
        return [sitk.Extract(image, size[:3] + [0], [0, 0, 0, c],
                             sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX) for c in range(size[3])]
    except RuntimeError as error:
        raise InputError(f"{subject}: cannot split into 3D channels: {error_reason(error)}") from None


def _split_values(image: sitk.Image, subject: str) -> list[sitk.Image]:
    """One 0/1 ``uint8`` mask per label value 1..K of an integer label map (channel k-1 = voxels equal to k)."""
    voxels = sitk.GetArrayViewFromImage(image)
    if not np.issubdtype(voxels.dtype, np.integer):
        raise InputError(f"{subject}: split_labels needs an integer label map, got {image.GetPixelIDTypeAsString()}")
    return [image == value for value in range(1, int(voxels.max(initial=0)) + 1)]


def read_label_channels(path: str | os.PathLike, *, name: str = "label",
                        split_labels: bool = False) -> list[sitk.Image]:
    """Read a label file as a list of 3D binary ``uint8`` masks (voxel > 0.5 is inside).

    Args:
        path: a 4D file ``(x, y, z, C)`` -> C masks; a 3D vector image -> one mask per component;
            a 3D scalar file -> ``[mask]``, or with ``split_labels`` one mask per label value 1..K.
        name: role of the file in messages.
        split_labels: read a 3D integer label map as channels ``value == 1``, ..., ``value == K``.

    Raises:
        InputError: missing/unreadable file, not 3D or 4D, NaN/Inf voxels, or a 4D direction whose spatial
            3×3 block is singular.
    """
    subject = f"{name} {path}"
    image = check_finite(read_image(path, name=name), subject)
    if image.GetNumberOfComponentsPerPixel() > 1 and image.GetDimension() == 3:
        return [_binary(sitk.VectorIndexSelectionCast(image, c))
                for c in range(image.GetNumberOfComponentsPerPixel())]
    if image.GetDimension() == 4:
        return [_binary(channel) for channel in _split_4d(image, subject)]
    check_volume(image, subject)
    return _split_values(image, subject) if split_labels else [_binary(image)]


def _same_grid(a: sitk.Image, b: sitk.Image, tolerance_mm: float = 1e-4) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance_mm)
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance_mm)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6))


def write_label_channels(channels: Sequence[sitk.Image], path: str | os.PathLike, *,
                         overwrite: bool = True) -> Path:
    """Write binary masks on one 3D grid as one multi-channel ``uint8`` file; return ``path``.

    Non-zero voxels are written as 1. ``.nii.gz``/``.nii`` give a 4D ``(x, y, z, C)`` NIfTI (the μ-RegPro
    layout); ``.nrrd`` gives a 3D NRRD with C components per voxel (``kinds: vector domain domain domain``).
    Both read back with :func:`read_label_channels` with the same geometry and voxels.

    Raises:
        InputError: no channels, a channel not 3D scalar, channels on different grids, or another suffix.
    """
    path = Path(path)
    if full_suffix(path) not in CHANNEL_SUFFIXES:
        raise InputError(f"{path}: cannot write label channels here; use one of {', '.join(CHANNEL_SUFFIXES)}")
    if not channels:
        raise InputError(f"{path}: no label channels to write")
    masks = [check_volume(channel, f"{path} channel {c}") != 0 for c, channel in enumerate(channels)]
    for c, mask in enumerate(masks[1:], start=1):
        if not _same_grid(masks[0], mask):
            raise InputError(f"{path}: channel {c} is not on the grid (size, origin, spacing, direction) of channel 0")
    for mask in masks[1:]:
        mask.CopyInformation(masks[0])
    stacked = sitk.Compose(masks) if full_suffix(path) == ".nrrd" else sitk.JoinSeries(masks)
    return write_volume(stacked, path, overwrite=overwrite)


def as_label_map(image: sitk.Image, name: str) -> sitk.Image:
    """``image`` as ``uint8`` (max ≤ 255) or ``uint16`` labels; non-integer, negative or larger values raise."""
    voxels = sitk.GetArrayViewFromImage(check_volume(image, name))
    if voxels.size and (voxels.min() < 0 or voxels.max() > np.iinfo(np.uint16).max):
        raise InputError(f"{name}: label values must lie in 0..65535, got {voxels.min()}..{voxels.max()}")
    if np.issubdtype(voxels.dtype, np.floating) and not np.array_equal(voxels, np.round(voxels)):
        raise InputError(f"{name}: label map holds non-integer values (threshold or round it first)")
    return sitk.Cast(image, sitk.sitkUInt8 if voxels.max(initial=0) <= 255 else sitk.sitkUInt16)


def read_label(path: str | os.PathLike, *, name: str = "label") -> sitk.Image:
    """Read a 3D integer label map (0 = background) as ``uint8`` or ``uint16``, keeping its geometry.

    Raises:
        InputError: missing/unreadable file, not 3D scalar, or values that are not integers in 0..65535.
    """
    return as_label_map(read_image(path, name=name), f"{name} {path}")


def write_label(image: sitk.Image, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write a 3D integer label map as ``uint8``/``uint16`` (see :func:`..volumes.write_volume` for suffixes)."""
    return write_volume(as_label_map(image, f"label map for {path}"), path, overwrite=overwrite)
