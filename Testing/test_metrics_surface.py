"""Surface distances, HD95 and ASD against MONAI, SimpleITK and a brute-force NumPy computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.metrics import (
    average_surface_distance_mm,
    hausdorff95_mm,
    hausdorff_distance_mm,
    surface_distances_mm,
    surface_points_mm,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")

SHAPE = (18, 22, 26)
OBLIQUE = sitk.VersorTransform((0.3, 0.5, 0.8), 0.6).GetMatrix()
GEOMETRIES = {
    "isotropic": dict(spacing=(1.0, 1.0, 1.0), direction=None),
    "anisotropic": dict(spacing=(0.6, 0.9, 2.5), direction=None),
    "oblique_anisotropic": dict(spacing=(0.8, 1.3, 0.5), direction=OBLIQUE),
}


def mask_image(array_zyx, spacing=(1.0, 1.0, 1.0), direction=None, origin=(4.0, -7.0, 12.0)):
    image = sitk.GetImageFromArray(np.asarray(array_zyx).astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def ellipsoid(centre_zyx, radii_zyx):
    z, y, x = np.indices(SHAPE)
    return sum(((c - m) / r) ** 2 for c, m, r in zip((z, y, x), centre_zyx, radii_zyx)) <= 1.0


def box(start_zyx, stop_zyx):
    array = np.zeros(SHAPE, bool)
    array[tuple(slice(a, b) for a, b in zip(start_zyx, stop_zyx))] = True
    return array


def mask_pairs():
    one_voxel = np.zeros(SHAPE, bool)
    one_voxel[9, 11, 13] = True
    rng = np.random.default_rng(1)
    return {
        "shifted_ellipsoids": (ellipsoid((9, 11, 13), (6, 7, 9)), ellipsoid((8, 12, 15), (5, 8, 8))),
        "ellipsoid_vs_box": (ellipsoid((9, 11, 13), (6, 7, 9)), box((4, 3, 6), (15, 17, 20))),
        "one_voxel_vs_ellipsoid": (one_voxel, ellipsoid((9, 11, 13), (4, 4, 4))),
        "touching_border": (box((0, 0, 0), (10, 22, 8)), ellipsoid((2, 11, 3), (5, 6, 5))),
        "whole_image_vs_box": (np.ones(SHAPE, bool), box((3, 3, 3), (15, 19, 23))),
        "noisy": (ellipsoid((9, 11, 13), (6, 7, 9)) ^ (rng.random(SHAPE) > 0.9), ellipsoid((9, 10, 13), (6, 6, 9))),
        "disjoint": (ellipsoid((4, 5, 5), (3, 3, 3)), ellipsoid((13, 16, 20), (3, 4, 4))),
    }


def case_ids():
    return [(pair, geometry) for pair in mask_pairs() for geometry in GEOMETRIES]


def images(pair, geometry):
    pred_array, ref_array = mask_pairs()[pair]
    return mask_image(pred_array, **GEOMETRIES[geometry]), mask_image(ref_array, **GEOMETRIES[geometry])


def brute_force_distances(pred, ref):
    """Surface by explicit 6-neighbour look-up, centres by origin + D·diag(s)·index, all-pairs distances."""

    def surface_points(image):
        array = np.pad(sitk.GetArrayFromImage(image) > 0, 1)  # outside the image is background
        inner = array[1:-1, 1:-1, 1:-1]
        has_background_neighbour = np.zeros_like(inner)
        for axis in range(3):
            for step in (-1, 1):
                has_background_neighbour |= ~np.roll(array, step, axis=axis)[1:-1, 1:-1, 1:-1]
        index_xyz = np.argwhere(inner & has_background_neighbour)[:, ::-1]
        matrix = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
        return np.asarray(image.GetOrigin()) + index_xyz @ matrix.T

    p, r = surface_points(pred), surface_points(ref)
    pairwise = np.linalg.norm(p[:, None, :] - r[None, :, :], axis=2)
    return pairwise.min(axis=1), pairwise.min(axis=0)


@pytest.mark.parametrize("pair,geometry", case_ids())
def test_against_brute_force(pair, geometry):
    pred, ref = images(pair, geometry)
    expected_pred_to_ref, expected_ref_to_pred = brute_force_distances(pred, ref)
    pred_to_ref, ref_to_pred = surface_distances_mm(pred, ref)
    np.testing.assert_allclose(np.sort(pred_to_ref), np.sort(expected_pred_to_ref), atol=1e-9)
    np.testing.assert_allclose(np.sort(ref_to_pred), np.sort(expected_ref_to_pred), atol=1e-9)
    expected_hd95 = max(np.percentile(expected_pred_to_ref, 95), np.percentile(expected_ref_to_pred, 95))
    assert hausdorff95_mm(pred, ref) == pytest.approx(expected_hd95, abs=1e-9)
    expected_asd = np.concatenate([expected_pred_to_ref, expected_ref_to_pred]).mean()
    assert average_surface_distance_mm(pred, ref) == pytest.approx(expected_asd, abs=1e-9)


@pytest.mark.parametrize("pair,geometry", case_ids())
def test_hd95_and_asd_match_monai(pair, geometry):
    pred, ref = images(pair, geometry)
    pred_array, ref_array = mask_pairs()[pair]
    p = torch.as_tensor(pred_array, dtype=torch.float32)[None, None]
    r = torch.as_tensor(ref_array, dtype=torch.float32)[None, None]
    spacing_zyx = list(GEOMETRIES[geometry]["spacing"][::-1])  # MONAI spacing follows the array axes
    monai_hd95 = float(compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=spacing_zyx))
    monai_asd = float(
        compute_average_surface_distance(p, r, include_background=True, symmetric=True, spacing=spacing_zyx)
    )
    assert hausdorff95_mm(pred, ref) == pytest.approx(monai_hd95, rel=1e-5, abs=1e-5)
    assert average_surface_distance_mm(pred, ref) == pytest.approx(monai_asd, rel=1e-5, abs=1e-5)


def sitk_hausdorff(a, b):
    hausdorff = sitk.HausdorffDistanceImageFilter()
    hausdorff.Execute(a, b)
    return hausdorff.GetHausdorffDistance()


@pytest.mark.parametrize("pair,geometry", case_ids())
def test_hd100_matches_simpleitk_on_surfaces(pair, geometry):
    """SimpleITK's filter measures between whole foregrounds; given the masks' surfaces (from SimpleITK's own
    face-connected BinaryContour, padded so border voxels are contour) it is the surface Hausdorff distance."""
    pred, ref = images(pair, geometry)

    def contour(image):
        padded = sitk.ConstantPad(image, (1, 1, 1), (1, 1, 1), 0)  # keeps physical positions
        return sitk.BinaryContour(padded, fullyConnected=False, backgroundValue=0, foregroundValue=1)

    assert hausdorff_distance_mm(pred, ref, percentile=100) == pytest.approx(
        sitk_hausdorff(contour(pred), contour(ref)), abs=1e-6
    )


@pytest.mark.parametrize("shift_zyx", [(0, 0, 3), (2, -1, 4), (-3, 2, 0)])
def test_hd100_of_translated_boxes_matches_simpleitk_on_masks(shift_zyx):
    """For a box and its translate the foreground and surface Hausdorff distances coincide (= shift length)."""
    start = np.array([5, 6, 7])
    stop = np.array([12, 15, 18])
    geometry = GEOMETRIES["oblique_anisotropic"]
    a = mask_image(box(start, stop), **geometry)
    b = mask_image(box(start + shift_zyx, stop + shift_zyx), **geometry)
    shift_mm = np.linalg.norm(np.multiply(shift_zyx[::-1], geometry["spacing"]))
    assert hausdorff_distance_mm(a, b, percentile=100) == pytest.approx(sitk_hausdorff(a, b), abs=1e-6)
    assert hausdorff_distance_mm(a, b, percentile=100) == pytest.approx(shift_mm, abs=1e-9)


def test_oblique_direction_and_origin_do_not_change_distances():
    pred_array, ref_array = mask_pairs()["shifted_ellipsoids"]
    straight = [mask_image(a, spacing=(0.8, 1.3, 0.5)) for a in (pred_array, ref_array)]
    oblique = [
        mask_image(a, spacing=(0.8, 1.3, 0.5), direction=OBLIQUE, origin=(-30, 2, 5)) for a in (pred_array, ref_array)
    ]
    for s, o in zip(surface_distances_mm(*straight), surface_distances_mm(*oblique)):
        np.testing.assert_allclose(s, o, atol=1e-9)


def test_surface_points_are_physical_voxel_centres():
    array = np.zeros(SHAPE, bool)
    array[3, 4, 5] = True
    image = mask_image(array, spacing=(0.8, 1.3, 0.5), direction=OBLIQUE)
    np.testing.assert_allclose(surface_points_mm(image), [image.TransformIndexToPhysicalPoint((5, 4, 3))], atol=1e-12)
    solid = mask_image(box((2, 2, 2), (7, 7, 7)))
    assert len(surface_points_mm(solid)) == 5**3 - 3**3  # the 3x3x3 core has no background neighbour


def test_empty_mask_conventions():
    empty = mask_image(np.zeros(SHAPE, bool))
    full = mask_image(ellipsoid((9, 11, 13), (4, 4, 4)))
    assert hausdorff95_mm(empty, empty) == 0.0 and average_surface_distance_mm(empty, empty) == 0.0
    assert math.isnan(hausdorff95_mm(empty, full)) and math.isnan(hausdorff95_mm(full, empty))
    assert math.isnan(average_surface_distance_mm(full, empty))
    pred_to_ref, ref_to_pred = surface_distances_mm(full, empty)
    assert len(pred_to_ref) > 0 and np.all(np.isinf(pred_to_ref)) and len(ref_to_pred) == 0


def test_invalid_inputs():
    a = mask_image(np.ones(SHAPE, bool))
    b = mask_image(np.ones(SHAPE, bool), spacing=(1.0, 1.0, 2.0))
    with pytest.raises(InputError, match="pred and ref must share one voxel grid"):
        hausdorff95_mm(a, b)
    with pytest.raises(InputError, match="percentile"):
        hausdorff_distance_mm(a, a, percentile=101)
