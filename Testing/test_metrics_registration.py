"""Mask warping, registration metrics and surface registration error against known transforms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.metrics import (
    dice,
    registration_metrics,
    surface_points_mm,
    surface_registration_error,
    surface_registration_error_mm,
    warp_mask,
)

SHAPE = (24, 26, 28)  # z, y, x
SPACING = (1.0, 1.0, 1.0)


def mask_image(array_zyx, spacing=SPACING, direction=None, origin=(0.0, 0.0, 0.0)):
    image = sitk.GetImageFromArray(np.asarray(array_zyx).astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def ball(centre_zyx, radius, shape=SHAPE):
    z, y, x = np.indices(shape)
    return (z - centre_zyx[0]) ** 2 + (y - centre_zyx[1]) ** 2 + (x - centre_zyx[2]) ** 2 <= radius**2


def box(start_zyx, size=2, shape=SHAPE):
    array = np.zeros(shape, bool)
    array[tuple(slice(s, s + size) for s in start_zyx)] = True
    return array


LANDMARK_STARTS = [(8, 9, 10), (14, 12, 9), (11, 15, 16)]


def channels(shift_zyx=(0, 0, 0)):
    """Gland (ball) and three landmark boxes, all shifted by ``shift_zyx`` voxels (1 mm spacing)."""
    centre = np.array([12, 13, 13]) + shift_zyx
    gland = mask_image(ball(centre, 7))
    landmarks = [mask_image(box(np.array(start) + shift_zyx)) for start in LANDMARK_STARTS]
    return [gland, *landmarks]


@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
def test_warp_mask_identity_and_integer_shift(interpolation):
    moving_array = ball((12, 13, 15), 6)
    moving = mask_image(moving_array * 5)  # labels > 0 count as foreground
    warped = warp_mask(moving, moving, sitk.Transform(), interpolation)
    assert warped.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(warped), moving_array)
    # T(x) = x + 3 mm along x: warped(i) = moving(i + 3), i.e. the ball appears 3 voxels lower in x
    shifted = warp_mask(moving, moving, sitk.TranslationTransform(3, (3.0, 0.0, 0.0)), interpolation)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(shifted), ball((12, 13, 12), 6))


def test_warp_mask_linear_thresholds_at_one_half():
    """A slab shifted by a fraction f of a voxel: linear interpolation gives 1 - f at the edge voxel."""
    slab = np.zeros(SHAPE, bool)
    slab[:, :, 10:18] = True
    moving = mask_image(slab)
    # x + 0.4: the voxel at x = 9 samples 9.4, value 0.4 < 0.5 -> out; at x = 17 samples 17.4, value 0.6 -> in
    kept = sitk.GetArrayFromImage(warp_mask(moving, moving, sitk.TranslationTransform(3, (0.4, 0.0, 0.0))))
    np.testing.assert_array_equal(kept, slab)
    # x + 0.6: the voxel at x = 9 samples 9.6 (0.6, in), at x = 17 samples 17.6 (0.4, out)
    moved = sitk.GetArrayFromImage(warp_mask(moving, moving, sitk.TranslationTransform(3, (0.6, 0.0, 0.0))))
    np.testing.assert_array_equal(moved, np.roll(slab, -1, axis=2))
    with pytest.raises(InputError, match="interpolation"):
        warp_mask(moving, moving, sitk.Transform(), "cubic")


def test_warp_mask_onto_another_grid():
    """The moving mask lands on the fixed grid, positions kept in physical space."""
    moving = mask_image(ball((12, 13, 14), 6), spacing=(1.0, 1.0, 1.0))
    fixed = mask_image(np.zeros((12, 13, 14)), spacing=(2.0, 2.0, 2.0), origin=(0.5, 0.5, 0.5))
    warped = warp_mask(moving, fixed, sitk.Transform())
    assert warped.GetSize() == fixed.GetSize() and warped.GetSpacing() == fixed.GetSpacing()
    z, y, x = np.indices((12, 13, 14))
    physical_zyx = np.stack([z, y, x]) * 2.0 + 0.5  # fixed voxel centres in the moving index frame
    expected = ((physical_zyx - np.array([12, 13, 14])[:, None, None, None]) ** 2).sum(axis=0) <= 36
    agreement = np.mean(sitk.GetArrayFromImage(warped).astype(bool) == expected)
    assert agreement > 0.99  # differs only where linear interpolation of the voxelised ball rounds otherwise


def test_registration_metrics_before_and_after_a_translation():
    fixed = channels()
    moving = channels(shift_zyx=(0, 3, 4))  # 4 mm along x, 3 mm along y
    before = registration_metrics(fixed, moving, sitk.Transform())
    assert set(before) == {"dice", "hd95_mm", "asd_mm", "tre_mm", "tre_mean_mm", "tre_median_mm"}
    assert before["dice"] == pytest.approx(dice(moving[0], fixed[0]))
    assert before["dice"] < 0.8 and before["hd95_mm"] > 3.0
    np.testing.assert_allclose(before["tre_mm"], [5.0, 5.0, 5.0], atol=1e-12)
    assert before["tre_mean_mm"] == pytest.approx(5.0) and before["tre_median_mm"] == pytest.approx(5.0)

    after = registration_metrics(fixed, moving, sitk.TranslationTransform(3, (4.0, 3.0, 0.0)))
    assert after["dice"] == 1.0 and after["hd95_mm"] == 0.0 and after["asd_mm"] == 0.0
    np.testing.assert_allclose(after["tre_mm"], 0.0, atol=1e-12)
    assert isinstance(after["tre_mm"], list) and all(isinstance(v, float) for v in after["tre_mm"])


def test_registration_metrics_of_a_displacement_field_adds_regularity():
    fixed = channels()
    moving = channels(shift_zyx=(0, 3, 4))
    field = np.zeros((*SHAPE, 3))
    field[..., 0], field[..., 1] = 4.0, 3.0  # the same translation, as a dense field
    image = sitk.GetImageFromArray(field, isVector=True)
    image.CopyInformation(fixed[0])
    metrics = registration_metrics(fixed, moving, sitk.DisplacementFieldTransform(image))
    assert metrics["folding_fraction"] == 0.0
    assert metrics["log_jacobian_std"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["dice"] == 1.0
    np.testing.assert_allclose(metrics["tre_mm"], 0.0, atol=1e-9)


def test_registration_metrics_gland_only_and_mismatched_channels():
    fixed, moving = channels(), channels(shift_zyx=(1, 0, 0))
    gland_only = registration_metrics(fixed[:1], moving[:1], sitk.Transform())
    assert set(gland_only) == {"dice", "hd95_mm", "asd_mm"}
    with pytest.raises(InputError, match="fixed_channels and moving_channels"):
        registration_metrics(fixed, moving[:2], sitk.Transform())
    with pytest.raises(InputError, match="fixed_channels and moving_channels"):
        registration_metrics([], [], sitk.Transform())


def test_sre_of_a_translation_error_in_mm_and_voxels():
    spacing = (0.5, 1.0, 2.0)
    gland = mask_image(ball((12, 13, 14), 5), spacing=spacing)
    truth = sitk.Euler3DTransform((10.0, 5.0, 0.0), 0.1, -0.2, 0.3, (2.0, 1.0, -1.0))
    error = sitk.CompositeTransform([truth, sitk.TranslationTransform(3, (1.0, 0.0, 0.0))])
    # est(p) = truth(p + (1, 0, 0)) with a rigid truth: the difference has length 1 mm at every point
    assert surface_registration_error_mm(gland, error, truth) == pytest.approx(1.0, abs=1e-12)
    shifted = sitk.TranslationTransform(3, (1.0, 0.0, 2.0))
    assert surface_registration_error(gland, shifted, sitk.Transform(), unit="vox") == pytest.approx(
        math.hypot(1.0 / 0.5, 2.0 / 2.0), abs=1e-12
    )
    with pytest.raises(InputError, match="unit"):
        surface_registration_error(gland, shifted, sitk.Transform(), unit="cm")
    with pytest.raises(InputError, match="mask: empty"):
        surface_registration_error_mm(mask_image(np.zeros(SHAPE)), shifted, sitk.Transform())


def test_sre_of_a_rotation_error_matches_hand_rotation():
    gland = mask_image(ball((12, 13, 14), 6), spacing=(0.8, 0.8, 1.5), origin=(-3.0, 2.0, 7.0))
    centre = np.array([8.0, 12.0, 25.0])
    angle = 0.2
    estimate = sitk.Euler3DTransform(centre.tolist(), 0.0, 0.0, angle, (0.0, 0.0, 0.0))
    rotation_z = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    points = surface_points_mm(gland)
    expected = np.linalg.norm((points - centre) @ rotation_z.T + centre - points, axis=1).mean()
    assert surface_registration_error_mm(gland, estimate, sitk.Transform()) == pytest.approx(expected, rel=1e-12)
    metrics = registration_metrics([gland], [gland], estimate, transform_true=sitk.Transform(), sre_unit="mm")
    assert metrics["sre_mm"] == pytest.approx(expected, rel=1e-12)
    metrics_vox = registration_metrics([gland], [gland], estimate, transform_true=estimate, sre_unit="vox")
    assert metrics_vox["sre_vox"] == 0.0 and "sre_mm" not in metrics_vox
