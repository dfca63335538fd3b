"""3D Slicer segmentation files (``.seg.nrrd``): a 3D label map plus named, coloured segments.

Files are written and read with ``slicerio`` (pynrrd underneath) in Slicer's own layout: space
``left-posterior-superior``, ``space directions`` = direction × spacing (mm, one column per voxel axis),
``space origin`` = the centre of voxel (0, 0, 0) in LPS mm, and ``Segment{i}_*`` fields per segment.
"""

from __future__ import annotations

import colorsys
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import slicerio

from ..errors import InputError
from .atomic import atomic_output, full_suffix
from .labels import as_label_map
from .volumes import error_reason

#: Colour of the prostate gland segment (RGB, 0..1).
GLAND_COLOR = (0.85, 0.70, 0.60)


@dataclass
class Segment:
    """One segment of a label map: its name, the voxel value that marks it, and its RGB colour (0..1)."""

    name: str
    label_value: int
    color: tuple[float, float, float]


def default_segments(n_lesions: int) -> list[Segment]:
    """``gland`` (label 1) and ``lesion 1`` .. ``lesion n`` (labels 2..n+1), each in a distinct colour."""
    lesions = [Segment(f"lesion {i}", i + 1, colorsys.hsv_to_rgb((i - 1) * 0.618034 % 1.0, 0.85, 0.95))
               for i in range(1, n_lesions + 1)]
    return [Segment("gland", 1, GLAND_COLOR)] + lesions


def _ijk_to_lps(image: sitk.Image) -> np.ndarray:
    """4×4 matrix from voxel index (i, j, k) to LPS mm."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.reshape(image.GetDirection(), (3, 3)) * np.asarray(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def _extent(voxels_ijk: np.ndarray, value: int) -> list[int]:
    """``[i0, i1, j0, j1, k0, k1]`` bounding the voxels equal to ``value`` (Slicer's empty extent if none)."""
    indices = np.nonzero(voxels_ijk == value)
    if not indices[0].size:
        return [0, -1, 0, -1, 0, -1]
    return [int(v) for axis in indices for v in (axis.min(), axis.max())]


def _check_segments(voxels: np.ndarray, segments: Sequence[Segment], subject: str) -> None:
    values = [s.label_value for s in segments]
    if len(set(values)) != len(values) or min(values, default=1) < 1:
        raise InputError(f"{subject}: segment label values must be distinct and ≥ 1, got {values}")
    unnamed = sorted(set(np.unique(voxels).tolist()) - set(values) - {0})
    if unnamed:
        raise InputError(f"{subject}: label values {unnamed} have no segment (Slicer would drop them)")


def write_seg_nrrd(label_map: sitk.Image, path: str | os.PathLike, segments: Sequence[Segment], *,
                   overwrite: bool = True) -> Path:
    """Write a 3D integer label map as a Slicer ``.seg.nrrd`` with the given named, coloured segments.

    Args:
        label_map: 3D label map (0 = background); its geometry (LPS mm, oblique directions included) is kept.
        path: output path ending in ``.seg.nrrd``.
        segments: one per non-zero label value present in ``label_map`` (a segment may be empty).

    Raises:
        InputError: wrong suffix, not a 3D integer label map, duplicate label values, or label values
            present in the map without a segment.
    """
    path = Path(path)
    if full_suffix(path) != ".seg.nrrd":
        raise InputError(f"{path}: a Slicer segmentation must end in .seg.nrrd")
    label_map = as_label_map(label_map, f"label map for {path}")
    voxels = sitk.GetArrayFromImage(label_map).transpose(2, 1, 0)  # (k, j, i) -> (i, j, k)
    _check_segments(voxels, segments, str(path))
    segmentation = {
        "voxels": voxels,
        "ijkToLPS": _ijk_to_lps(label_map),
        "containedRepresentationNames": ["Binary labelmap"],
        "segments": [{"id": f"Segment_{s.label_value}", "name": s.name, "labelValue": s.label_value, "layer": 0,
                      "color": [float(c) for c in s.color], "extent": _extent(voxels, s.label_value)}
                     for s in segments],
    }
    with atomic_output(path, overwrite) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation)
    return path


def _image_from_ijk(voxels: np.ndarray, ijk_to_lps: np.ndarray) -> sitk.Image:
    """The image of ``voxels`` indexed (i, j, k) whose voxel -> LPS mm matrix is ``ijk_to_lps`` (4×4)."""
    if voxels.ndim != 3:
        raise ValueError(f"{voxels.shape[0]} layers of overlapping segments do not fit in one label map")
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(voxels.transpose(2, 1, 0)))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((ijk_to_lps[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin(ijk_to_lps[:3, 3].tolist())
    return image


def read_seg_nrrd(path: str | os.PathLike) -> tuple[sitk.Image, list[Segment]]:
    """Read a Slicer ``.seg.nrrd`` as (3D label map in LPS mm, its segments).

    Raises:
        InputError: missing or unreadable file, a segment without name, label value or colour, or
            overlapping segments stored in several layers (one label map cannot hold them).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"segmentation {path}: no such file")
    try:
        segmentation = slicerio.read_segmentation(str(path))
        segments = [Segment(s["name"], int(s["labelValue"]), tuple(s["color"])) for s in segmentation["segments"]]
        image = _image_from_ijk(segmentation["voxels"], np.asarray(segmentation["ijkToLPS"], dtype=float))
    except Exception as error:  # pynrrd, slicerio and SimpleITK raise assorted errors; a missing field is a KeyError
        raise InputError(f"segmentation {path}: cannot read as a Slicer label map: {error_reason(error)}") from None
    return as_label_map(image, f"segmentation {path}"), segments
