"""The population gland strain: its geometry against SimpleITK, its fit against a known strain, its file, its
training through ``train`` and its place in ``auto``'s gland stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.metrics.landmarks import centroid_mm
from MRITRUSFusionLib.phantom import generate_phantom, write_phantom_case
from MRITRUSFusionLib.registration import gland_strain, methods
from MRITRUSFusionLib.registration.gland_strain import GlandStrain, fit_gland_strain
from MRITRUSFusionLib.registration.linear import linear_matrix, matrix_to_affine

#: A known strain: 5 % stretch along x, 10 % compression along y, 5 % along z (LPS), as log.
TRUE_LOG_STRAIN = np.diag(np.log([1.05, 0.90, 0.95]))
POINTS = np.array([[0.0, 0.0, 0.0], [12.5, -30.0, 7.0], [-40.0, 15.0, 22.0], [3.0, 3.0, -18.0]])


def random_affine(seed: int) -> sitk.AffineTransform:
    rng = np.random.default_rng(seed)
    affine = sitk.AffineTransform(3)
    affine.SetMatrix((np.eye(3) + 0.2 * rng.standard_normal((3, 3))).ravel().tolist())
    affine.SetCenter(rng.uniform(-50, 50, 3).tolist())
    affine.SetTranslation(rng.uniform(-10, 10, 3).tolist())
    return affine


def mapped(transform: sitk.Transform, points=POINTS) -> np.ndarray:
    return np.array([transform.TransformPoint(p.tolist()) for p in points])


def test_linear_matrix_maps_points_as_simpleitk_does():
    for seed in range(3):
        affine = random_affine(seed)
        matrix = linear_matrix(affine)
        np.testing.assert_allclose(POINTS @ matrix[:3, :3].T + matrix[:3, 3], mapped(affine), atol=1e-9)
        np.testing.assert_allclose(mapped(matrix_to_affine(matrix)), mapped(affine), atol=1e-9)
    euler = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (4.0, 5.0, 6.0))
    np.testing.assert_allclose(mapped(matrix_to_affine(linear_matrix(euler))), mapped(euler), atol=1e-9)


def test_strain_about_a_centre_keeps_the_centre_and_scales_offsets():
    strain = GlandStrain(TRUE_LOG_STRAIN, cases=1)
    centre = np.array([-20.0, 35.0, 4.0])
    transform = strain.about(centre)
    np.testing.assert_allclose(transform.TransformPoint(centre.tolist()), centre, atol=1e-9)
    np.testing.assert_allclose(mapped(transform) - centre, (POINTS - centre) * [1.05, 0.90, 0.95], atol=1e-9)


def ellipsoid_mask(size=(48, 48, 48), spacing=1.5, radii_mm=(22.0, 15.0, 18.0), origin=(-30.0, -40.0, -20.0)):
    """A binary ellipsoid (LPS semi-axes ``radii_mm``) centred on its grid."""
    image = sitk.Image(list(size), sitk.sitkUInt8)
    image.SetSpacing([spacing] * 3)
    image.SetOrigin(origin)
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in size]))
    k, j, i = np.meshgrid(*[np.arange(s) for s in size[::-1]], indexing="ij")
    points = np.stack([i, j, k], -1) * spacing + np.array(origin)
    inside = (((points - centre) / np.array(radii_mm)) ** 2).sum(-1) <= 1
    mask = sitk.GetImageFromArray(inside.astype(np.uint8))
    mask.CopyInformation(image)
    return mask


def pair_with_strain(rotation_deg, translation_mm):
    """(TRUS, MRI, TRUS gland, MRI gland) whose true TRUS → MRI map is ``rigid ∘ strain`` (about the gland)."""
    fixed_mask = ellipsoid_mask()
    centre = centroid_mm(fixed_mask)
    rigid = sitk.Euler3DTransform(centre.tolist(), *np.radians(rotation_deg), translation_mm)
    truth = GlandStrain(TRUE_LOG_STRAIN, cases=1).after(rigid, fixed_mask)
    moving_grid = ellipsoid_mask(size=(44, 52, 40), spacing=1.6, origin=(-35.0, -45.0, -30.0))
    moving_mask = sitk.Resample(fixed_mask, moving_grid, truth.GetInverse(), sitk.sitkNearestNeighbor, 0)
    return (sitk.Cast(fixed_mask, sitk.sitkFloat32), sitk.Cast(moving_mask, sitk.sitkFloat32), fixed_mask,
            moving_mask), truth


def test_fit_recovers_a_known_strain_from_gland_masks():
    pairs = [pair_with_strain((6.0, -4.0, 8.0), (3.0, -2.0, 1.0))[0],
             pair_with_strain((-5.0, 7.0, -3.0), (-2.0, 4.0, 0.0))[0]]
    fitted = fit_gland_strain(pairs)
    assert fitted.cases == 2
    np.testing.assert_allclose(fitted.log_strain, TRUE_LOG_STRAIN, atol=0.02)


def test_after_composes_like_a_simpleitk_composite():
    strain = GlandStrain(TRUE_LOG_STRAIN, cases=1)
    mask = ellipsoid_mask()
    rigid = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.05, 0.2, (4.0, -5.0, 6.0))
    composite = sitk.CompositeTransform([rigid, strain.about(centroid_mm(mask))])  # the last one added acts first
    np.testing.assert_allclose(mapped(strain.after(rigid, mask)), mapped(composite), atol=1e-9)


def test_file_round_trip_and_bad_files(tmp_path):
    strain = GlandStrain(TRUE_LOG_STRAIN, cases=70, report={"rigid_tre_median_mm": 4.5})
    path = strain.save(tmp_path / "gland-strain.json")
    again = GlandStrain.load(path)
    np.testing.assert_allclose(again.log_strain, strain.log_strain)
    assert again.cases == 70 and again.report == {"rigid_tre_median_mm": 4.5}
    np.testing.assert_allclose(json.loads(path.read_text())["strain"], np.diag([1.05, 0.90, 0.95]), atol=1e-12)
    (tmp_path / "other.json").write_text(json.dumps({"model": "trus-unet"}))
    (tmp_path / "broken.json").write_text("{")
    for name, message in (("other.json", "not a gland-strain"), ("broken.json", "cannot read"),
                          ("missing.json", "cannot read")):
        with pytest.raises(InputError, match=message):
            GlandStrain.load(tmp_path / name)
    with pytest.raises(InputError, match="symmetric"):
        GlandStrain(np.array([[0.0, 0.1, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), cases=1)


def test_auto_gland_stage_applies_the_installed_strain_after_the_predicted_gland_rigid(monkeypatch):
    (fixed, moving, fixed_mask, moving_mask), _ = pair_with_strain((4.0, 0.0, -6.0), (2.0, 1.0, -1.0))
    strain = GlandStrain(TRUE_LOG_STRAIN, cases=1)
    monkeypatch.setattr(methods, "predicted_glands", lambda *args, **kwargs: (fixed_mask, moving_mask))
    monkeypatch.setattr(methods, "default_gland_strain", lambda: strain)
    rigid = methods.register_classical(fixed, moving, "rigid", fixed_mask, moving_mask)
    with_strain = methods.gland_prealignment(fixed, moving)
    np.testing.assert_allclose(mapped(with_strain), mapped(strain.after(rigid, fixed_mask)), atol=1e-6)
    given = methods.gland_prealignment(fixed, moving, fixed_mask, moving_mask)  # the user's masks: affine only
    np.testing.assert_allclose(mapped(given), mapped(methods.register_classical(fixed, moving, "affine", fixed_mask,
                                                                                moving_mask)), atol=1e-6)
    monkeypatch.setattr(methods, "default_gland_strain", lambda: None)
    np.testing.assert_allclose(mapped(methods.gland_prealignment(fixed, moving)), mapped(rigid), atol=1e-6)


def test_default_gland_strain_reads_the_models_folder(monkeypatch, tmp_path):
    GlandStrain(TRUE_LOG_STRAIN, cases=3).save(tmp_path / gland_strain.WEIGHTS_FILE)
    monkeypatch.setenv("MRITRUS_FUSION_MODELS", str(tmp_path))
    assert gland_strain.default_gland_strain().cases == 3


@pytest.fixture(scope="module")
def phantom_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("strain-phantoms")
    for seed, name in enumerate(("obs000", "obs001", "obs002")):
        write_phantom_case(generate_phantom(seed=seed, trus_size=(48, 48, 48), trus_spacing=(1.6,) * 3,
                                            mri_size=(40, 40, 28), mri_spacing=(2, 2, 3)), root, name)
    return root


def test_train_fits_validates_and_writes_the_model(phantom_dataset, tmp_path, monkeypatch):
    from MRITRUSFusionLib.training import train

    monkeypatch.setattr(methods, "gland_models_present", lambda: False)  # validate on the true masks
    config = {"model": {"name": "gland-strain"},
              "data": {"source": "deepreg", "path": str(phantom_dataset), "cases": ["obs000-obs001"],
                       "validation_cases": ["obs002"]}}
    path = train(config, out=tmp_path / "gland-strain.json")
    model = GlandStrain.load(path)
    assert model.cases == 2 and model.report["glands"] == "true" and model.report["cases"] == 1
    assert model.report["landmarks"] > 0 and np.isfinite(model.report["strain_tre_median_mm"])
    with pytest.raises(InputError, match="not 'phantom'"):
        train({"model": {"name": "gland-strain"}, "data": {"source": "phantom"}}, out=tmp_path / "x.json")


def test_residual_of_a_pure_rigid_pair_is_no_strain():
    fixed_mask = ellipsoid_mask()
    rigid = sitk.Euler3DTransform(centroid_mm(fixed_mask).tolist(), 0.05, -0.08, 0.1, (2.0, -3.0, 1.0))
    moving_mask = sitk.Resample(fixed_mask, ellipsoid_mask(size=(44, 52, 40), spacing=1.6),
                                rigid.GetInverse(), sitk.sitkNearestNeighbor, 0)
    log_residual = gland_strain.residual_log(sitk.Cast(fixed_mask, sitk.sitkFloat32),
                                             sitk.Cast(moving_mask, sitk.sitkFloat32), fixed_mask, moving_mask)
    np.testing.assert_allclose((log_residual + log_residual.T) / 2, np.zeros((3, 3)), atol=0.02)
