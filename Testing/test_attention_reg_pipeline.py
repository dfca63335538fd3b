"""Attention-Reg pipeline (seed 002): data perturbations, inference contract, weights errors, sample convention."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.registration.learned import attention_reg_infer as infer
from MRITRUSFusionLib.registration.learned.attention_reg import AttentionReg
from MRITRUSFusionLib.registration.learned.attention_reg_data import (
    apply_correction, default_sample_root, image_centre_mm, make_pair, perturbed_start,
    random_rigid_params, RegistrationSource, sample_case_images, load_sample_case, scale_to_sre,
    params_sre_mm)
from MRITRUSFusionLib.registration.learned.attention_reg_infer import register_attention_reg
from MRITRUSFusionLib.registration.linear import linear_matrix
from MRITRUSFusionLib.registration.learned.spatial import euler_to_rigid_params, rigid_params_to_euler
from MRITRUSFusionLib.segmentation.checkpoints import make_checkpoint, save_checkpoint

ARGS = {"extractor_channels": [4, 8], "regressor_channels": [8, 8, 8], "pooled_size": 2, "hidden_features": 16,
        "norm": "instance"}


def _fixed_image(seed: int = 0) -> sitk.Image:
    """A smooth blob image (40×36×32 voxels at 2 mm, oblique origin) with structure in every direction."""
    rng = np.random.default_rng(seed)
    array = rng.normal(size=(32, 36, 40)).astype(np.float32)
    image = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(array), 2.0)
    image = sitk.RescaleIntensity(image, 0.0, 255.0)
    image.SetSpacing((2.0, 2.0, 2.0))
    image.SetOrigin((-30.0, 12.0, 40.0))
    return image


def _checkpoint(tmp_path, network: AttentionReg, name: str = "ar.pt"):
    checkpoint = make_checkpoint("attention-reg", ARGS, network, 2.0, [16, 16, 16], "nonzero-percentile-1-99")
    return save_checkpoint(checkpoint, tmp_path / name)


def _max_difference(a: sitk.Transform, b: sitk.Transform, points) -> float:
    return max(np.linalg.norm(np.subtract(a.TransformPoint(p), b.TransformPoint(p))) for p in points)


POINTS = [(-20.0, 20.0, 45.0), (10.0, 40.0, 70.0), (0.0, 30.0, 60.0), (25.0, 5.0, 90.0)]


def test_perturbation_round_trip():
    rng = np.random.default_rng(3)
    truth = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.05, -0.1, 0.2, (4.0, -5.0, 6.0))
    centre = np.array([2.0, 3.0, 50.0])
    for params in random_rigid_params(rng, 5):
        current = perturbed_start(truth, params, centre)
        assert _max_difference(current, truth, POINTS) > 1e-3  # the perturbation moves points
        corrected = apply_correction(current, params, centre)
        assert _max_difference(corrected, truth, POINTS) < 1e-6


def test_scale_to_sre_hits_the_target():
    rng = np.random.default_rng(0)
    points = rng.uniform(-25, 25, size=(200, 3)) + 50.0
    params = scale_to_sre(random_rigid_params(rng, 1)[0], 12.0, points, (50.0, 50.0, 50.0))
    assert params_sre_mm(params, points, (50.0, 50.0, 50.0)) == pytest.approx(12.0, rel=1e-3)


def test_training_pair_target_undoes_the_start():
    fixed = _fixed_image()
    truth = sitk.Euler3DTransform(image_centre_mm(fixed).tolist(), 0.02, 0.0, -0.03, (1.0, -1.0, 0.5))
    moving = sitk.Resample(fixed, fixed, truth.GetInverse(), sitk.sitkLinear, 0.0)
    source = RegistrationSource(fixed, moving, truth, image_centre_mm(fixed))
    trus, mri, target, current, grid = make_pair(source, np.array([2.0, 0, 0, 0, 0, 3.0]), (16, 16, 16), 2.0)
    assert trus.shape == mri.shape == (16, 16, 16) and target.shape == (6,)
    assert 0.0 <= trus.min() and trus.max() <= 1.0
    fixed_centre = image_centre_mm(grid)
    assert _max_difference(apply_correction(current, target, fixed_centre), truth, POINTS) < 1e-5


def test_missing_and_incompatible_weights(tmp_path):
    fixed = _fixed_image()
    with pytest.raises(InputError, match="attention-reg"):
        register_attention_reg(fixed, fixed, weights=tmp_path / "missing.pt", device="cpu")
    other = make_checkpoint("trus-unet", ARGS, AttentionReg(**ARGS), 2.0, [16, 16, 16], "x")
    save_checkpoint(other, tmp_path / "other.pt")
    with pytest.raises(InputError, match="attention-reg"):
        register_attention_reg(fixed, fixed, weights=tmp_path / "other.pt", device="cpu")
    wrong = make_checkpoint("attention-reg", {**ARGS, "hidden_features": 8}, AttentionReg(**ARGS), 2.0,
                            [16, 16, 16], "x")
    save_checkpoint(wrong, tmp_path / "wrong.pt")
    with pytest.raises(InputError, match="AttentionReg"):
        register_attention_reg(fixed, fixed, weights=tmp_path / "wrong.pt", device="cpu")


def test_identity_network_returns_the_initial_transform(tmp_path):
    torch.manual_seed(0)
    path = _checkpoint(tmp_path, AttentionReg(**ARGS, identity_init=True))
    fixed = _fixed_image()
    initial = sitk.Euler3DTransform(image_centre_mm(fixed).tolist(), 0.03, 0.01, -0.02, (2.0, 0.0, -1.0))
    result = register_attention_reg(fixed, fixed, initial, weights=path, device="cpu", stages=2)
    assert isinstance(result, sitk.AffineTransform)
    assert _max_difference(result, initial, POINTS) < 1e-6


class _ConstantNetwork(AttentionReg):
    """Predicts the same correction for any input (to check how corrections are composed)."""

    def forward(self, trus, mri, trus_mask=None, mri_mask=None):
        return torch.tensor([[1.5, -2.0, 0.5, 2.0, -1.0, 3.0]], dtype=trus.dtype).expand(trus.shape[0], 6)


def test_corrections_compose_in_the_contract_direction(tmp_path, monkeypatch):
    path = _checkpoint(tmp_path, AttentionReg(**ARGS))
    monkeypatch.setattr(infer, "AttentionReg", _ConstantNetwork)
    fixed = _fixed_image()
    initial = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.0, 0.1, 0.0, (3.0, 1.0, 0.0))
    centre = image_centre_mm(fixed)
    result = register_attention_reg(fixed, fixed, initial, weights=path, device="cpu", stages=2)
    delta = rigid_params_to_euler([1.5, -2.0, 0.5, 2.0, -1.0, 3.0], centre)
    expected = sitk.CompositeTransform([initial, delta, delta])  # T = T0 ∘ Δ ∘ Δ: TRUS point -> MRI point
    assert _max_difference(result, expected, POINTS) < 1e-6
    rotation = linear_matrix(result)[:3, :3]
    assert np.allclose(rotation.T @ rotation, np.eye(3), atol=1e-9) and np.linalg.det(rotation) == pytest.approx(1.0)


def test_bundled_weights_on_a_phantom_pair():
    """The bundled network (trained on the authors' US/MR sample only) on a phantom pair: the moving image
    is the phantom TRUS resampled through a known small rigid transform (TRUS point -> moving point).

    Honest scope: the sample-trained model does *not* generalise to this synthetic mono-modal pair (it
    moves away from the truth; numbers in docs/attention-reg.md), so this checks only that the pipeline
    returns a finite rigid ``AffineTransform`` whose correction about the TRUS centre stays within the
    training range. The move toward the truth is checked on the sample's test cases by
    scripts/attention_reg_sample_eval.py and, for the composition itself, by the constant-network test.
    """
    from MRITRUSFusionLib.phantom import generate_phantom

    if not infer.default_weights_path().is_file():
        pytest.skip("no bundled attention-reg weights")
    fixed = generate_phantom(seed=1, trus_size=(48, 40, 40), trus_spacing=(1.6, 1.6, 1.6), mri_size=(32, 32, 24),
                             mri_spacing=(2.0, 2.0, 2.5), deformation_mm=0.0).trus
    centre = image_centre_mm(fixed)
    truth = rigid_params_to_euler([2.0, -1.5, 1.0, 2.0, 0.0, -2.0], centre)
    moving = sitk.Resample(fixed, fixed, truth.GetInverse(), sitk.sitkLinear, 0.0)
    result = register_attention_reg(fixed, moving, None, device="cpu", stages=2)
    assert isinstance(result, sitk.AffineTransform)
    matrix = linear_matrix(result)
    assert np.allclose(matrix[:3, :3].T @ matrix[:3, :3], np.eye(3), atol=1e-6)
    params = euler_to_rigid_params(result, centre)
    assert np.all(np.isfinite(params))
    assert np.linalg.norm(params[:3]) < 60.0 and np.all(np.abs(params[3:]) < 60.0)
    # the parameters about the TRUS centre rebuild the same map (a rigid map about the patch centre)
    assert _max_difference(rigid_params_to_euler(params, centre), result, POINTS) < 1e-6


@pytest.mark.skipif(not (default_sample_root() / "gt.txt").is_file(), reason="attention-reg sample not present")
def test_sample_matrix_convention():
    """US_k placed in the TRUS frame through I_k⁻¹ (diag(s) index + o) coincide for different k."""
    trus_a = sample_case_images(load_sample_case(1))[0]
    trus_b = sample_case_images(load_sample_case(2))[0]
    moved = sitk.GetArrayFromImage(sitk.Resample(trus_b, trus_a, sitk.Transform(), sitk.sitkLinear, -1.0))
    reference = sitk.GetArrayFromImage(trus_a)
    inside = moved >= 0
    a, b = moved[inside] - moved[inside].mean(), reference[inside] - reference[inside].mean()
    assert (a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()) > 0.95
