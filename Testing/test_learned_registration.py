"""Learned registration plumbing: grid, registry, inference transforms, trainer task, CLI.

Independent truths: the phantom's known TRUS → MRI transform (an oracle network predicting its DDF must give
a written ``.h5`` that maps TRUS landmarks as the ground truth does), SimpleITK affine transforms, and
bit-identical resumed training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MRITRUSFusionLib.cli import main
from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.io import read_transform, write_transform
from MRITRUSFusionLib.metrics.landmarks import centroids_mm, transform_points
from MRITRUSFusionLib.phantom import _rotation_matrix, generate_phantom, make_grid
from MRITRUSFusionLib.registration.learned.baselines import build_globalnet, build_localnet
from MRITRUSFusionLib.registration.learned.grid import pair_on_grid, registration_grid
from MRITRUSFusionLib.registration.learned.infer import affine_from_ddf, chain, register_batch
from MRITRUSFusionLib.registration.learned.models import LoadedRegistration, registration_spec
from MRITRUSFusionLib.registration.learned.spatial import transform_to_ddf
from MRITRUSFusionLib.training import train
from MRITRUSFusionLib.training.config import config_from_dict

GRID = (16, 16, 16)
SPACING_MM = 5.0


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(seed=5)


def _oblique_image() -> sitk.Image:
    return make_grid((40, 30, 20), (0.7, 0.9, 1.3), _rotation_matrix((15.0, -20.0, 35.0)), (10.0, -5.0, 30.0))


def test_registration_grid_is_centred_on_the_trus_with_its_direction():
    fixed = _oblique_image()
    grid = registration_grid(fixed, (16, 12, 8), 2.5)
    centre = np.array(fixed.TransformContinuousIndexToPhysicalPoint([19.5, 14.5, 9.5]))
    assert np.allclose(grid.TransformContinuousIndexToPhysicalPoint([7.5, 5.5, 3.5]), centre, atol=1e-9)
    assert grid.GetDirection() == pytest.approx(fixed.GetDirection())
    assert grid.GetSpacing() == pytest.approx((2.5, 2.5, 2.5))
    assert grid.GetSize() == (16, 12, 8)


@pytest.mark.parametrize("builder", [build_localnet, build_globalnet])
def test_baseline_networks_start_as_identity(builder):
    network = builder(spatial_size=(16, 16, 16))
    fixed, moving = torch.randn(2, 1, 16, 16, 16), torch.randn(2, 1, 16, 16, 16)
    ddf = network(fixed, moving)["ddf"]
    assert ddf.shape == (2, 3, 16, 16, 16)
    assert torch.allclose(ddf, torch.zeros_like(ddf), atol=1e-6)


def test_affine_from_ddf_recovers_a_known_affine():
    grid = registration_grid(_oblique_image(), (12, 10, 8), 3.0)
    truth = sitk.AffineTransform(3)
    truth.SetMatrix([1.04, 0.08, -0.02, -0.05, 0.97, 0.03, 0.01, 0.02, 1.06])
    truth.SetTranslation([4.0, -2.5, 3.0])
    truth.SetCenter([10.0, -5.0, 30.0])
    fitted = affine_from_ddf(transform_to_ddf(truth, grid), grid)
    points = np.random.default_rng(0).uniform(-20, 40, size=(20, 3))
    assert np.allclose(transform_points(fitted, points), transform_points(truth, points), atol=1e-4)


class OracleNetwork(torch.nn.Module):
    """Returns a stored DDF whatever the images (stands in for a perfectly trained network)."""

    def __init__(self, ddf: torch.Tensor):
        super().__init__()
        self.ddf = ddf

    def forward(self, fixed, moving):
        return {"ddf": self.ddf.expand(fixed.shape[0], -1, -1, -1, -1)}


def test_written_h5_maps_phantom_landmarks_like_the_ground_truth(phantom, tmp_path):
    """Pre-alignment + a learned stage predicting the true residual, chained and written as one .h5."""
    initial = sitk.TranslationTransform(3, (3.0, -2.0, 1.5))
    spec = registration_spec("localnet")
    size = (40, 40, 40)
    grid = registration_grid(phantom.trus, size, 2.0)
    residual = chain(initial.GetInverse(), phantom.transform)  # x -> T0^-1(GT(x))
    oracle = OracleNetwork(transform_to_ddf(residual, grid))
    model = LoadedRegistration(spec, oracle, torch.device("cpu"), 2.0, size, Path("oracle"))
    transform = register_batch(model, [(phantom.trus, phantom.mri, initial)])[0]
    path = write_transform(transform, tmp_path / "chain.h5")
    written = read_transform(path)
    trus_points = centroids_mm(phantom.trus_labels[1:])
    expected = transform_points(phantom.transform, trus_points)
    mapped = transform_points(written, trus_points)
    assert np.linalg.norm(mapped - expected, axis=1).max() < 0.5  # mm, field sampled at 2 mm
    identity_error = np.linalg.norm(trus_points - expected, axis=1).mean()
    assert identity_error > 3.0  # the phantom is misaligned, so the check is not vacuous


def test_batch_of_cases_gives_each_case_its_own_transform(phantom):
    spec = registration_spec("globalnet")
    model = LoadedRegistration(spec, build_globalnet(spatial_size=(16, 16, 16)).eval(), torch.device("cpu"),
                               6.0, (16, 16, 16), Path("untrained"))
    shift = sitk.TranslationTransform(3, (5.0, 0.0, 0.0))
    first, second = register_batch(model, [(phantom.trus, phantom.mri, None), (phantom.trus, phantom.mri, shift)])
    point = np.array([[1.0, 2.0, 3.0]])
    assert np.allclose(transform_points(first, point), point, atol=1e-4)  # identity network
    assert np.allclose(transform_points(second, point), point + [5.0, 0, 0], atol=1e-4)


def test_pair_outside_the_field_of_view_is_a_clear_error(phantom):
    far = sitk.TranslationTransform(3, (1000.0, 0.0, 0.0))
    with pytest.raises(InputError, match="do not overlap"):
        pair_on_grid(phantom.trus, phantom.mri, (16, 16, 16), 4.0, far)


def _config(tmp_path: Path, **changes) -> dict:
    config = {
        "model": {"name": "localnet", "arguments": {"num_channel_initial": 4, "extract_levels": [0, 1, 2]}},
        "loss": {"name": "terms", "terms": [{"name": "mi", "weight": 1.0}, {"name": "bending", "weight": 1.0}]},
        "data": {"source": "phantom", "seed_start": 0, "count": 2, "trus_size": [48, 48, 48],
                 "trus_spacing": [1.6, 1.6, 1.6], "mri_size": [40, 40, 28], "mri_spacing": [2.0, 2.0, 3.0]},
        "augmentation": {"affine": {"probability": 1.0, "rotate_deg": 5, "translate_mm": 4},
                         "intensity": {"probability": 0.5}},
        "validation": {"metric": "tre"},
        "patch_size": list(GRID), "spacing_mm": SPACING_MM, "iterations": 4, "batch_size": 2,
        "checkpoint_every": 1, "device": "cpu", "output": str(tmp_path / "reg.pt"), "log_every": 0,
    }
    config.update(changes)
    return config


def test_registration_training_resumes_bit_identically(tmp_path):
    whole = train(config_from_dict(_config(tmp_path / "a")), out=tmp_path / "a.pt")
    config = config_from_dict(_config(tmp_path / "b"))
    train(config, out=tmp_path / "b.pt", stop_after=2)
    resumed = train(config, out=tmp_path / "b.pt", resume=True)
    first = torch.load(whole, weights_only=True)
    second = torch.load(resumed, weights_only=True)
    assert first["model"] == "localnet" and first["kind"] == "deformable"
    assert first["arguments"]["spatial_size"] == list(GRID)[::-1]
    for key, value in first["state_dict"].items():
        assert torch.equal(value, second["state_dict"][key]), key


@pytest.mark.parametrize("change, key", [
    ({"loss": {"name": "terms", "terms": [{"name": "nope"}]}}, "loss.terms[0].name"),
    ({"loss": {"name": "terms", "terms": [{"name": "mi", "arguments": {"bogus": 1}}]}}, "loss.terms[0].arguments"),
    ({"loss": {"name": "dice_ce"}}, "loss.name"),
])
def test_bad_registration_loss_fails_before_training(tmp_path, change, key):
    with pytest.raises(InputError, match=key.replace("[", r"\[").replace("]", r"\]")):
        train(config_from_dict(_config(tmp_path, **change)))


def test_segmentation_model_refuses_the_tre_metric(tmp_path):
    config = _config(tmp_path, model={"name": "trus-unet"}, loss={"name": "dice_ce"})
    with pytest.raises(InputError, match="metric"):
        train(config_from_dict(config))


def test_cli_registers_with_a_trained_checkpoint(tmp_path, phantom):
    config = _config(tmp_path, iterations=1)
    weights = train(config_from_dict(config), out=tmp_path / "localnet.pt")
    fixed, moving = tmp_path / "trus.nii.gz", tmp_path / "mri.nii.gz"
    sitk.WriteImage(phantom.trus, str(fixed))
    sitk.WriteImage(phantom.mri, str(moving))
    out = tmp_path / "t.h5"
    assert main(["--progress", "none", "register", "--fixed", str(fixed), "--moving", str(moving), "--method",
                 "localnet", "--weights", str(weights), "--transform-out", str(out), "--device", "cpu"]) == 0
    transform = read_transform(out)
    assert not transform.IsLinear()
    assert main(["--progress", "none", "register", "--fixed", str(fixed), "--moving", str(moving), "--method",
                 "localnet", "--weights", str(weights), "--transform-out", str(tmp_path / "t.tfm")]) == 1


@pytest.mark.parametrize("learned, glands, masks, expected", [
    (["ecmca-lstm", "globalnet"], True, False, ["gland-rigid", "ecmca-lstm"]),   # predicted glands: rigid
    (["ecmca-lstm", "globalnet"], False, True, ["gland-affine", "ecmca-lstm"]),  # the user's masks: affine
    (["ecmca-lstm", "globalnet"], False, False, ["globalnet", "ecmca-lstm"]),    # no glands: learned affine
    (["ecmca-lstm"], False, False, ["ecmca-lstm"]),
    ([], False, False, ["bspline"]),                                              # nothing learned: classical
])
def test_auto_runs_the_chain_stages_that_have_weights(monkeypatch, learned, glands, masks, expected):
    from MRITRUSFusionLib.registration import methods

    monkeypatch.setattr(methods, "available_methods", lambda: learned)
    monkeypatch.setattr(methods, "gland_models_present", lambda: glands)
    assert methods.auto_stages(masks) == expected


def test_auto_with_masks_and_no_learned_stage_is_the_gland_driven_affine(monkeypatch, phantom):
    from MRITRUSFusionLib.registration import methods

    monkeypatch.setattr(methods, "available_methods", lambda: [])
    transform = methods.register(phantom.trus, phantom.mri, "auto", phantom.trus_labels[0], phantom.mri_labels[0])
    direct = methods.register_classical(phantom.trus, phantom.mri, "affine", phantom.trus_labels[0],
                                        phantom.mri_labels[0])
    points = centroids_mm(phantom.trus_labels[1:])
    assert np.allclose(transform_points(transform, points), transform_points(direct, points), atol=1e-6)


def _ball(reference: sitk.Image, radius_mm: float) -> sitk.Image:
    """A ball of ``radius_mm`` at the centre of ``reference``'s grid (uint8 mask on that grid)."""
    size = np.array(reference.GetSize())
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij"), -1)[..., ::-1]  # (k,j,i,3)
    offset = ((index - (size - 1) / 2) * np.asarray(reference.GetSpacing())) @ np.asarray(
        reference.GetDirection()).reshape(3, 3).T
    mask = sitk.GetImageFromArray((np.linalg.norm(offset, axis=-1) <= radius_mm).astype(np.uint8))
    mask.CopyInformation(reference)
    return mask


def test_gland_volumes_further_apart_than_the_limit_are_implausible(phantom):
    from MRITRUSFusionLib.registration import methods

    small, same, large = (_ball(phantom.trus, r) for r in (10.0, 11.0, 20.0))  # volume ratios 1.33 and 8
    assert methods.implausible_glands(small, same) is None
    assert "disagree" in methods.implausible_glands(small, large)
    assert "empty" in methods.implausible_glands(small, small * 0)


def test_auto_pre_aligns_with_globalnet_when_the_predicted_glands_are_implausible(monkeypatch, phantom, caplog):
    from MRITRUSFusionLib.registration import methods

    if "globalnet" not in methods.available_methods():
        pytest.skip("no bundled globalnet weights")
    monkeypatch.setattr(methods, "available_methods", lambda: ["globalnet"])
    monkeypatch.setattr(methods, "gland_models_present", lambda: True)
    monkeypatch.setattr(methods, "predicted_glands",
                        lambda fixed, moving, device: (_ball(fixed, 10.0), _ball(moving, 20.0)))
    with caplog.at_level("WARNING", logger="MRITRUSFusionLib"):
        transform = methods.register(phantom.trus, phantom.mri, "auto", device="cpu")
    assert "predicted gland volumes disagree" in caplog.text and "globalnet" in caplog.text
    direct = methods.register(phantom.trus, phantom.mri, "globalnet", device="cpu")
    points = centroids_mm(phantom.trus_labels[1:])
    assert np.allclose(transform_points(transform, points), transform_points(direct, points), atol=1e-4)


def test_any_registration_checkpoint_loads_from_the_file_alone(tmp_path):
    from MRITRUSFusionLib.registration.learned.models import LoadedRegistration
    from MRITRUSFusionLib.training.state import load_for_inference

    weights = train(config_from_dict(_config(tmp_path, iterations=1)), out=tmp_path / "model.pt")
    loaded = load_for_inference(weights, device="cpu")
    assert isinstance(loaded, LoadedRegistration)
    assert loaded.spec.name == "localnet" and loaded.grid_size == GRID and loaded.spacing_mm == SPACING_MM


def test_paired_augmentation_deforms_the_mri_and_the_trus_copy_alike():
    """Seed 003 keys: with identical TRUS and MRI content, the MRI-side deformation ψ gives the same result
    on the MRI and on the TRUS copy, and the undeformed MRI is kept."""
    from MRITRUSFusionLib.training.config import AugmentationSection
    from MRITRUSFusionLib.training.registration_data import RegistrationAugmentation

    section = AugmentationSection.model_validate({"affine": {"probability": 1.0, "rotate_deg": 10, "translate_mm": 6},
                                                  "elastic": {"probability": 1.0}})
    image = torch.rand(1, 16, 16, 16)
    sample = {"fixed_image": image.clone(), "moving_image": image.clone(),
              "fixed_label": torch.zeros(2, 16, 16, 16), "moving_label": torch.zeros(2, 16, 16, 16)}
    out = RegistrationAugmentation(section, 3.0, paired=True)(sample, seed=4)
    assert not torch.allclose(out["moving_image"], image, atol=1e-3)  # ψ is not the identity
    assert torch.allclose(out["fixed_modality_in_moving_space"], out["moving_image"], atol=1e-6)
    assert torch.equal(out["moving_modality_in_fixed_space"], image)
    assert torch.equal(out["fixed_image"], image)


def test_intra_modal_term_trains_on_aligned_phantom_pairs_only(tmp_path):
    terms = {"name": "terms", "terms": [{"name": "intra-modal", "weight": 1.0}, {"name": "mi", "weight": 0.5}]}
    with pytest.raises(InputError, match="data.prealign"):
        train(config_from_dict(_config(tmp_path, loss=terms)))
    config = _config(tmp_path, loss=terms, iterations=2)
    config["data"]["prealign"] = "ground-truth"
    weights = train(config_from_dict(config), out=tmp_path / "paired.pt")
    assert np.isfinite(torch.load(weights, weights_only=True)["final_loss"])
