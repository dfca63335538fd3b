"""Surface-distance metrics of two binary masks on one grid, in millimetres of physical (LPS) space.

Definitions, pinned to MONAI (``monai.metrics.compute_hausdorff_distance`` with ``percentile=95`` and
``monai.metrics.compute_average_surface_distance`` with ``symmetric=True``, both given the voxel spacing):

* The *surface* of a mask is the set of its foreground voxels with at least one background voxel among
  their 6 face neighbours; voxels outside the image count as background, so foreground touching the image
  border is surface (``mask XOR binary_erosion(mask)`` with the 6-connected cross, as MONAI computes it).
* A surface voxel stands for its centre, the physical point ``origin + D·diag(spacing)·index`` (mm, LPS);
  distances are Euclidean between those points, so anisotropic spacing and oblique directions count.
* The directed surface distances pred->ref are, for each surface voxel of ``pred``, the distance to the
  nearest surface voxel of ``ref`` (and symmetrically ref->pred).
* HD95 = max(95th percentile of pred->ref, 95th percentile of ref->pred), percentiles with linear
  interpolation (``numpy.percentile`` / ``torch.quantile`` default); ``percentile=100`` gives the classic
  Hausdorff distance between the two surfaces.
* ASD (average symmetric surface distance) = mean of the union of both directed distance sets.

Empty masks: both empty -> 0.0 (the surfaces agree); exactly one empty -> nan (undefined; MONAI returns
inf). :func:`surface_distances_mm` returns ``inf`` for each surface voxel when the other surface is empty.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import binary_erosion, generate_binary_structure
from scipy.spatial import KDTree

from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.metrics._image import check_same_grid, indices_to_physical, mask_array

_FACE_NEIGHBOURS = generate_binary_structure(3, 1)


def surface_points_mm(mask: sitk.Image) -> np.ndarray:
    """Physical LPS centres (mm, shape ``(K, 3)``) of the surface voxels of ``mask`` (see module docstring)."""
    foreground = mask_array(mask, "mask")
    surface = foreground & ~binary_erosion(foreground, structure=_FACE_NEIGHBOURS, border_value=0)
    return indices_to_physical(mask, np.argwhere(surface))


def _directed_distances(from_points: np.ndarray, to_points: np.ndarray) -> np.ndarray:
    """For each of ``from_points`` the distance to the nearest of ``to_points`` (inf if there is none)."""
    if len(to_points) == 0:
        return np.full(len(from_points), np.inf)
    return KDTree(to_points).query(from_points, k=1)[0] if len(from_points) else np.empty(0)


def _empty_surface_value(pred_to_ref: np.ndarray, ref_to_pred: np.ndarray) -> float | None:
    """The documented value when a surface is empty (0.0 both, nan one), None when both have voxels."""
    if len(pred_to_ref) == 0 and len(ref_to_pred) == 0:
        return 0.0
    if len(pred_to_ref) == 0 or len(ref_to_pred) == 0:
        return math.nan
    return None


def surface_distances_mm(pred: sitk.Image, ref: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: (pred->ref for each surface voxel of pred, ref->pred for each of ref)."""
    check_same_grid(pred, ref, "pred", "ref")
    pred_points = surface_points_mm(pred)
    ref_points = surface_points_mm(ref)
    return _directed_distances(pred_points, ref_points), _directed_distances(ref_points, pred_points)


def hausdorff_distance_mm(pred: sitk.Image, ref: sitk.Image, percentile: float = 100.0) -> float:
    """Symmetric percentile Hausdorff distance of the two surfaces, in mm (0 if both empty, nan if one is)."""
    if not 0.0 <= percentile <= 100.0:
        raise InputError(f"percentile: must lie in [0, 100], got {percentile}")
    pred_to_ref, ref_to_pred = surface_distances_mm(pred, ref)
    empty_value = _empty_surface_value(pred_to_ref, ref_to_pred)
    if empty_value is not None:
        return empty_value
    return float(max(np.percentile(pred_to_ref, percentile), np.percentile(ref_to_pred, percentile)))


def hausdorff95_mm(pred: sitk.Image, ref: sitk.Image) -> float:
    """HD95: 95th-percentile symmetric Hausdorff distance of the surfaces, in mm (MONAI ``percentile=95``)."""
    return hausdorff_distance_mm(pred, ref, percentile=95.0)


def average_surface_distance_mm(pred: sitk.Image, ref: sitk.Image) -> float:
    """Average symmetric surface distance in mm (MONAI ``symmetric=True``); 0 if both empty, nan if one is."""
    pred_to_ref, ref_to_pred = surface_distances_mm(pred, ref)
    empty_value = _empty_surface_value(pred_to_ref, ref_to_pred)
    if empty_value is not None:
        return empty_value
    return float(np.concatenate([pred_to_ref, ref_to_pred]).mean())
