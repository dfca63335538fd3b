"""Landmark centroids and TRE against hand-computed geometry and known transforms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.metrics import (
    centroid_mm,
    centroids_mm,
    landmark_tre_mm,
    target_registration_errors_mm,
    transform_points,
)

OBLIQUE = sitk.VersorTransform((0.3, 0.5, 0.8), 0.6).GetMatrix()
SPACING = (0.8, 1.3, 2.1)
ORIGIN = (-12.0, 30.5, 7.25)


def mask_image(array_zyx, spacing=SPACING, origin=ORIGIN, direction=OBLIQUE):
    image = sitk.GetImageFromArray(np.asarray(array_zyx).astype(np.int32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def blob(shape, seed):
    rng = np.random.default_rng(seed)
    array = np.zeros(shape, np.int32)
    start = rng.integers(0, 4, size=3)
    region = (slice(start[0], start[0] + 5), slice(start[1], start[1] + 4), slice(start[2], start[2] + 6))
    array[region] = rng.integers(0, 3, size=(5, 4, 6))
    array[tuple(start)] = 2  # never empty
    return array


@pytest.mark.parametrize("seed", range(4))
def test_centroid_of_oblique_mask_matches_index_to_physical_formula(seed):
    array = blob((12, 10, 14), seed)
    image = mask_image(array)
    index_xyz = np.argwhere(array > 0)[:, ::-1].astype(float)
    matrix = np.asarray(OBLIQUE).reshape(3, 3) @ np.diag(SPACING)
    expected = np.asarray(ORIGIN) + matrix @ index_xyz.mean(axis=0)
    np.testing.assert_allclose(centroid_mm(image), expected, atol=1e-10)


def test_centroid_matches_simpleitk_label_statistics():
    array = (blob((12, 10, 14), 7) > 0).astype(np.int32)
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(mask_image(array))
    np.testing.assert_allclose(centroid_mm(mask_image(array)), statistics.GetCentroid(1), atol=1e-9)


def test_centroid_of_single_voxel_at_border_is_its_centre():
    array = np.zeros((6, 7, 8))
    array[5, 0, 7] = 1
    image = mask_image(array)
    np.testing.assert_allclose(centroid_mm(image), image.TransformIndexToPhysicalPoint((7, 0, 5)), atol=1e-12)


def test_centroids_and_empty_mask():
    masks = [mask_image(blob((12, 10, 14), seed)) for seed in range(3)]
    np.testing.assert_allclose(centroids_mm(masks), [centroid_mm(m) for m in masks])
    assert centroids_mm([]).shape == (0, 3)
    with pytest.raises(InputError, match=r"masks\[1\]: mask: landmark mask is empty"):
        centroids_mm([masks[0], mask_image(np.zeros((4, 4, 4)))])


def test_translation_3_4_0_gives_tre_of_exactly_5_mm():
    masks = [mask_image(blob((12, 10, 14), seed)) for seed in range(3)]
    translation = sitk.TranslationTransform(3, (3.0, 4.0, 0.0))
    tre = landmark_tre_mm(masks, masks, translation)
    np.testing.assert_allclose(tre, [5.0, 5.0, 5.0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(landmark_tre_mm(masks, masks, sitk.Transform()), 0.0, atol=1e-12)


def test_euler_rotation_about_a_known_centre():
    centre = np.array([10.0, -5.0, 3.0])
    angle = math.radians(30.0)
    rotation = sitk.Euler3DTransform(centre.tolist(), 0.0, 0.0, angle, (0.0, 0.0, 0.0))
    radius = 8.0
    fixed = np.array([centre + [radius, 0.0, 0.0], centre + [0.0, radius, 2.0], centre])
    # about z by +30 degrees: (r, 0) -> (r cos, r sin); (0, r) -> (-r sin, r cos); the centre stays
    expected_mapped = np.array(
        [
            centre + [radius * math.cos(angle), radius * math.sin(angle), 0.0],
            centre + [-radius * math.sin(angle), radius * math.cos(angle), 2.0],
            centre,
        ]
    )
    np.testing.assert_allclose(transform_points(rotation, fixed), expected_mapped, atol=1e-12)
    # moving landmarks where they were: TRE is the chord 2 r sin(angle / 2) off-centre, 0 at the centre
    chord = 2 * radius * math.sin(angle / 2)
    np.testing.assert_allclose(target_registration_errors_mm(fixed, fixed, rotation), [chord, chord, 0.0], atol=1e-12)
    # moving landmarks at the rotated positions: perfect registration
    np.testing.assert_allclose(target_registration_errors_mm(fixed, expected_mapped, rotation), 0.0, atol=1e-12)


def test_tre_uses_the_fixed_to_moving_direction():
    """T maps fixed -> moving: TRE compares T(fixed) with moving, not T(moving) with fixed."""
    fixed = np.array([[0.0, 0.0, 0.0]])
    moving = np.array([[2.0, 0.0, 0.0]])
    scale = sitk.ScaleTransform(3, (3.0, 1.0, 1.0))
    scale.SetCenter((1.0, 0.0, 0.0))  # T(x) = 1 + 3 (x - 1): T(0) = -2, T(2) = 4
    assert target_registration_errors_mm(fixed, moving, scale)[0] == pytest.approx(4.0)


def test_invalid_point_sets():
    with pytest.raises(InputError, match="fixed_points and moving_points"):
        target_registration_errors_mm(np.zeros((2, 3)), np.zeros((3, 3)), sitk.Transform())
    with pytest.raises(InputError, match=r"points: expected an \(N, 3\) array"):
        transform_points(sitk.Transform(), np.zeros((4, 2)))
    with pytest.raises(InputError, match="finite"):
        transform_points(sitk.Transform(), np.full((1, 3), np.nan))
    with pytest.raises(InputError, match="transform"):
        transform_points("identity", np.zeros((1, 3)))
    with pytest.raises(InputError, match="fixed_masks and moving_masks"):
        landmark_tre_mm([mask_image(np.ones((3, 3, 3)))], [], sitk.Transform())
