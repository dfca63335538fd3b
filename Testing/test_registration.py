"""Classical registration and warping against independent truth: the phantom's ground-truth transform, a
known rigid transform applied with SimpleITK, and closed-form inverses."""

import numpy as np
import pytest
import SimpleITK as sitk

from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.metrics.landmarks import centroids_mm
from MRITRUSFusionLib.phantom import generate_phantom
from MRITRUSFusionLib.registration.classical import register_classical
from MRITRUSFusionLib.registration.warp import map_points_to_fixed, warp_image


@pytest.fixture(scope="module")
def case():
    return generate_phantom(seed=1)


def landmark_tre(case, transform):
    """Mean distance (mm) between T(TRUS landmark centroid) and the MRI landmark centroid."""
    fixed = centroids_mm(case.trus_labels[1:])
    moving = centroids_mm(case.mri_labels[1:])
    mapped = np.array([transform.TransformPoint(p.tolist()) for p in fixed])
    return float(np.linalg.norm(mapped - moving, axis=1).mean())


def test_gland_driven_affine_recovers_phantom_alignment(case):
    transform = register_classical(case.trus, case.mri, "affine", case.trus_labels[0], case.mri_labels[0])
    assert isinstance(transform, sitk.AffineTransform)
    before = landmark_tre(case, sitk.Transform())
    after = landmark_tre(case, transform)
    assert before > 5.0
    assert after < 1.0


def test_gland_driven_bspline_is_composite_and_accurate(case):
    transform = register_classical(case.trus, case.mri, "bspline", case.trus_labels[0], case.mri_labels[0])
    assert not transform.IsLinear()
    assert landmark_tre(case, transform) < 1.2


def test_image_only_rigid_recovers_known_rigid_transform():
    """Mono-modal: the moving image is the TRUS resampled by SimpleITK through a known rigid transform."""
    trus = generate_phantom(seed=3).trus
    truth = sitk.Euler3DTransform(np.array(trus.TransformContinuousIndexToPhysicalPoint(
        [s / 2 for s in trus.GetSize()])).tolist(), 0.05, -0.04, 0.06, (3.0, -4.0, 2.0))
    # moving(y) = trus(truth^-1(y)), so the registration must return truth (fixed point -> moving point).
    moving = sitk.Resample(trus, trus, truth.GetInverse(), sitk.sitkLinear, 0.0)
    estimate = register_classical(trus, moving, "rigid")
    probe = np.array([trus.TransformContinuousIndexToPhysicalPoint([i, j, k])
                      for i in (30, 60) for j in (30, 60) for k in (30, 60)])
    errors = [np.linalg.norm(np.subtract(estimate.TransformPoint(p.tolist()), truth.TransformPoint(p.tolist())))
              for p in probe]
    assert max(errors) < 1.0


def test_registration_rejects_one_mask_and_unknown_method(case):
    with pytest.raises(InputError, match="both"):
        register_classical(case.trus, case.mri, "rigid", case.trus_labels[0], None)
    with pytest.raises(InputError, match="--method"):
        register_classical(case.trus, case.mri, "elastic")


def test_warp_image_matches_simpleitk_resample(case):
    warped = warp_image(case.mri, case.trus, case.transform)
    oracle = sitk.Resample(case.mri, case.trus, case.transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    np.testing.assert_allclose(sitk.GetArrayFromImage(warped), sitk.GetArrayFromImage(oracle), atol=1e-5)
    label = warp_image(case.mri_labels[0], case.trus, case.transform, label=True)
    assert label.GetPixelID() == case.mri_labels[0].GetPixelID()
    assert label.GetOrigin() == case.trus.GetOrigin() and label.GetDirection() == case.trus.GetDirection()


def test_map_points_inverts_deformable_ground_truth(case):
    """MRI landmark centroids pushed through the inverse of the phantom's composite (affine + displacement
    field) land on the TRUS landmark centroids, and T(mapped) returns the MRI points."""
    mri_points = centroids_mm(case.mri_labels[1:])
    mapped = map_points_to_fixed(case.transform, mri_points)
    np.testing.assert_allclose(mapped, centroids_mm(case.trus_labels[1:]), atol=0.3)
    back = np.array([case.transform.TransformPoint(p.tolist()) for p in mapped])
    np.testing.assert_allclose(back, mri_points, atol=1e-2)


def test_map_points_linear_uses_exact_inverse():
    affine = sitk.AffineTransform([1.1, 0.1, 0, 0, 0.9, 0.05, 0, 0, 1.0], [5, -3, 2], [10, 0, 0])
    points = np.array([[0.0, 0.0, 0.0], [12.5, -7.0, 30.0]])
    mapped = map_points_to_fixed(affine, points)
    matrix = np.array(affine.GetMatrix()).reshape(3, 3)
    centre, translation = np.array(affine.GetCenter()), np.array(affine.GetTranslation())
    expected = (np.linalg.inv(matrix) @ (points - centre - translation).T).T + centre
    np.testing.assert_allclose(mapped, expected, atol=1e-9)


def test_registration_is_deterministic(case):
    """Same inputs, same transform: the metric's random sampling is seeded (SimpleITK seed 0 = clock)."""
    first = register_classical(case.trus, case.mri, "rigid")
    second = register_classical(case.trus, case.mri, "rigid")
    np.testing.assert_allclose(first.GetParameters(), second.GetParameters(), rtol=0, atol=1e-6)
