"""Inference that respects geometry and the user: input grids kept, inputs per model, flips, lesion candidates,
``.seg.nrrd`` segments, and the ``segment`` command's errors. Tiny volumes and dummy networks: each test < 10 s."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MRITRUSFusionLib.cli import main
from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.io import default_segments, read_label_channels, read_seg_nrrd, read_volume
from MRITRUSFusionLib.metrics import dice
from MRITRUSFusionLib.phantom import _rotation_matrix, make_grid, voxel_centres_mm
from MRITRUSFusionLib.segmentation.inference import (
    check_inputs,
    flip_sets,
    input_volume,
    label_from_probability,
    target_probability,
)
from MRITRUSFusionLib.segmentation.lesions import lesion_candidates
from MRITRUSFusionLib.segmentation.models import MODELS, LoadedModel, default_weights_path

MRUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "mrus-example"
#: A validation case of the gland models (obs070-obs079), never a held-out one (obs080-obs107).
VALIDATION_CASE = "obs075"


class PointwiseLogits(torch.nn.Module):
    """Logits (0, gain·x) of a one-channel input: target probability = sigmoid(gain·x), voxel by voxel."""

    def __init__(self, gain: float = 2.0):
        super().__init__()
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), self.gain * x], dim=1)


def dummy_model(network: torch.nn.Module, inputs=("trus",), spacing_mm: float = 1.0, patch=(16, 16, 16),
                normalisation: str = "zscore", flip_axes=(0, 1, 2)) -> LoadedModel:
    """A :class:`LoadedModel` around ``network`` whose checkpoint config records training ``flip_axes``."""
    spec = dataclasses.replace(MODELS["gland-trus"], name="dummy", inputs=tuple(inputs))
    return LoadedModel(spec=spec, network=network.eval(), device=torch.device("cpu"), spacing_mm=spacing_mm,
                       patch_size=tuple(patch), normalisation=normalisation, path=Path("dummy.pt"),
                       metadata={"config": {"augmentation": {"flip_axes": list(flip_axes)}}})


def oblique_grid(size, spacing, degrees=(12.0, -8.0, 25.0), centre=(10.0, -20.0, 35.0)) -> sitk.Image:
    return make_grid(size, spacing, _rotation_matrix(degrees), centre)


def blob(grid: sitk.Image, centre_mm, sigma_mm: float = 6.0) -> sitk.Image:
    """A Gaussian blob (peak 100 at ``centre_mm``, floor 1) sampled on ``grid`` in physical space."""
    distance2 = ((voxel_centres_mm(grid) - np.asarray(centre_mm)) ** 2).sum(-1)
    image = sitk.GetImageFromArray((1.0 + 100.0 * np.exp(-distance2 / (2 * sigma_mm**2))).astype(np.float32))
    image.CopyInformation(grid)
    return image


def _same_grid(a: sitk.Image, b: sitk.Image, atol: float = 0.0) -> bool:
    """Same size, and origin, spacing and direction equal (up to ``atol``: files store float32 geometry)."""
    return a.GetSize() == b.GetSize() and all(
        np.allclose(getattr(a, f"Get{key}")(), getattr(b, f"Get{key}")(), rtol=0, atol=atol)
        for key in ("Origin", "Spacing", "Direction"))


# --------------------------------------------------------------------------------- geometry of the output
def test_sliding_window_output_keeps_an_oblique_non_multiple_of_patch_grid():
    # 37 x 29 x 23 voxels of 0.7 x 0.9 x 1.3 mm: 26 x 27 x 30 voxels at the model's 1 mm, several 16³ windows.
    grid = oblique_grid((37, 29, 23), (0.7, 0.9, 1.3))
    centre = np.asarray(grid.TransformContinuousIndexToPhysicalPoint((12.0, 17.0, 9.0)))  # off-centre
    image = blob(grid, centre)
    probability = target_probability({"trus": image}, dummy_model(PointwiseLogits()))
    assert _same_grid(probability, image)
    # Independent truth: the pointwise network applied to the input itself (z-scored) on its own grid.
    values = sitk.GetArrayFromImage(image)
    expected = 1.0 / (1.0 + np.exp(-2.0 * (values - values.mean()) / values.std()))
    got = sitk.GetArrayFromImage(probability)
    assert np.abs(got - expected).max() < 0.06
    # The brightest output voxel is where the blob is: no axis was flipped, swapped or shifted.
    peak = np.unravel_index(np.argmax(got), got.shape)[::-1]
    assert np.linalg.norm(np.asarray(probability.TransformIndexToPhysicalPoint([int(i) for i in peak])) - centre) < 1.5


def test_mri_inputs_reach_a_trus_reference_through_the_transform():
    trus = oblique_grid((30, 28, 26), (1.0, 1.0, 1.0))
    mri_grid = make_grid((40, 40, 40), (1.2, 1.2, 1.2), np.eye(3), (10.0, -20.0, 35.0))
    shift = np.array([6.0, -4.0, 3.0])  # TRUS point p -> MRI point p + shift
    lesion_trus = np.asarray(trus.TransformContinuousIndexToPhysicalPoint((10.0, 18.0, 12.0)))
    mri = blob(mri_grid, lesion_trus + shift, sigma_mm=3.0)
    model = dummy_model(PointwiseLogits(), inputs=("trus", "mri"))
    volume, grid = input_volume({"trus": blob(trus, lesion_trus), "mri": mri}, model,
                                sitk.TranslationTransform(3, shift.tolist()))
    assert volume.shape[0] == 2 and volume.shape[1:] == sitk.GetArrayViewFromImage(grid).shape
    peak = np.unravel_index(np.argmax(volume[1]), volume[1].shape)[::-1]
    assert np.linalg.norm(np.asarray(grid.TransformIndexToPhysicalPoint([int(i) for i in peak])) - lesion_trus) < 1.0


# -------------------------------------------------------------------------------------------- inputs
@pytest.mark.parametrize("inputs, given, transform, option", [
    (("trus",), [], False, "--trus"),
    (("mri",), ["trus"], False, "--mri"),
    (("trus",), ["trus", "mri"], False, "--mri"),
    (("trus", "mri"), ["trus", "mri"], False, "--transform"),
    (("mri",), ["mri"], True, "--transform"),
    (("mri", "adc"), ["mri"], False, "--adc"),
])
def test_inputs_a_model_does_not_take_or_lacks_are_named(inputs, given, transform, option):
    spec = dataclasses.replace(MODELS["gland-trus"], inputs=inputs)
    with pytest.raises(InputError, match=f"^{option}: model 'gland-trus'"):
        check_inputs(spec, given, transform)


def test_registered_models_declare_their_inputs():
    assert MODELS["gland-trus"].inputs == ("trus",) and MODELS["gland-trus"].target == "gland"
    assert MODELS["gland-mri"].inputs == ("mri",) and MODELS["gland-mri"].target == "gland"
    assert MODELS["trus-unet"].inputs == ("trus",) and MODELS["trus-unet"].target == "tumour"


# ---------------------------------------------------------------------------------- test-time flips
def _symmetric_conv(seed: int) -> torch.nn.Conv3d:
    """A 3×3×3 convolution whose kernels are mirror-symmetric along every axis: flip-equivariant."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv3d(1, 2, 3, padding=1)
    with torch.no_grad():
        kernel = conv.weight
        conv.weight.copy_(sum(kernel.flip(dims) for dims in flip_sets((0, 1, 2))) / 8)
    return conv


def test_flip_tta_of_a_flip_equivariant_network_equals_no_tta():
    grid = oblique_grid((22, 20, 17), (1.1, 0.9, 1.2))  # 25 x 18 x 21 voxels at 1 mm: 2 windows per axis
    image = blob(grid, grid.TransformContinuousIndexToPhysicalPoint((6.0, 12.0, 5.0)))
    model = dummy_model(_symmetric_conv(0))
    plain = sitk.GetArrayFromImage(target_probability({"trus": image}, model))
    flipped = sitk.GetArrayFromImage(target_probability({"trus": image}, model, tta=True))
    np.testing.assert_allclose(flipped, plain, atol=1e-5)
    # An asymmetric network is not equivariant: TTA then changes the result, so it did run.
    asymmetric = dummy_model(torch.nn.Conv3d(1, 2, 3, padding=1))
    assert not np.allclose(sitk.GetArrayFromImage(target_probability({"trus": image}, asymmetric, tta=True)),
                           sitk.GetArrayFromImage(target_probability({"trus": image}, asymmetric)), atol=1e-4)


def test_flip_sets_cover_every_combination_of_the_training_flips():
    assert flip_sets((0,)) == [(), (4,)]
    assert sorted(flip_sets((0, 2))) == sorted([(), (4,), (2,), (4, 2)])


def test_tta_refuses_a_model_trained_without_flips():
    image = blob(oblique_grid((20, 20, 20), (1.0, 1.0, 1.0)), (10.0, -20.0, 35.0))
    with pytest.raises(InputError, match="--tta: .* trained without flips"):
        target_probability({"trus": image}, dummy_model(PointwiseLogits(), flip_axes=()), tta=True)


# ---------------------------------------------------------------------------------- lesion candidates
def _two_blob_probability() -> tuple[sitk.Image, dict]:
    """Probability map (0.5 x 1 x 2 mm voxels = 1 mm³, oblique) with a 60-voxel and a 12-voxel blob."""
    array = np.full((20, 30, 40), 0.05, np.float32)  # (k, j, i)
    array[2:5, 3:8, 4:8] = 0.7                     # 3 x 5 x 4 = 60 voxels, one at 0.95
    array[3, 5, 6] = 0.95
    array[12:14, 20:23, 30:32] = 0.8               # 2 x 3 x 2 = 12 voxels
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.5, 1.0, 2.0))
    image.SetDirection(_rotation_matrix((20.0, 0.0, -30.0)).ravel().tolist())
    image.SetOrigin((5.0, -7.0, 12.0))
    centres = {"big": image.TransformContinuousIndexToPhysicalPoint((5.5, 5.0, 3.0)),
               "small": image.TransformContinuousIndexToPhysicalPoint((30.5, 21.0, 12.5))}
    return image, centres


def test_lesion_candidates_of_two_blobs_have_their_volumes_and_max_probabilities():
    probability, centres = _two_blob_probability()
    components, candidates = lesion_candidates(probability, threshold=0.5)
    assert [c.index for c in candidates] == [1, 2]
    big, small = candidates  # ranked by maximum probability: 0.95 before 0.8
    assert big.voxels == 60 and big.volume_ml == pytest.approx(0.060)
    assert small.voxels == 12 and small.volume_ml == pytest.approx(0.012)
    assert big.max_probability == pytest.approx(0.95) and small.max_probability == pytest.approx(0.8)
    assert big.mean_probability == pytest.approx((59 * 0.7 + 0.95) / 60, abs=1e-6)
    np.testing.assert_allclose(big.centroid_lps_mm, centres["big"], atol=1e-4)
    np.testing.assert_allclose(small.centroid_lps_mm, centres["small"], atol=1e-4)
    assert _same_grid(components, probability)
    values = sitk.GetArrayViewFromImage(components)
    assert values[3, 5, 6] == 1 and values[12, 20, 30] == 2 and np.count_nonzero(values) == 72
    # A minimum volume of 20 mm³ drops the 12 mm³ blob.
    assert [c.voxels for c in lesion_candidates(probability, 0.5, min_volume_mm3=20.0)[1]] == [60]


def test_tumour_labels_and_segments_follow_the_lesion_ranking():
    probability, _ = _two_blob_probability()
    result = label_from_probability(probability, "tumour", threshold=0.5, min_volume_mm3=0.0)
    assert [s.name for s in result.segments] == ["lesion 1", "lesion 2"]
    assert [s.label_value for s in result.segments] == [2, 3]
    values = sitk.GetArrayViewFromImage(result.label)
    assert values[3, 5, 6] == 2 and values[12, 20, 30] == 3
    gland = label_from_probability(probability, "gland", threshold=0.5)  # the largest component only
    assert [s.name for s in gland.segments] == ["gland"]
    assert np.count_nonzero(sitk.GetArrayViewFromImage(gland.label)) == 60


# ------------------------------------------------------------------------------------------ command
@pytest.mark.parametrize("arguments, option", [
    (["--model", "gland-mri", "--trus", "t.nii.gz"], "--mri"),
    (["--model", "gland-trus", "--mri", "m.nii.gz"], "--trus"),
    (["--model", "trus-unet"], "--trus"),
    (["--model", "gland-trus", "--trus", "t.nii.gz", "--transform", "t.tfm"], "--transform"),
    (["--model", "gland-trus", "--trus", "t.nii.gz", "--lesions-out", "l.json"], "--lesions-out"),
    (["--model", "trus-unet", "--trus", "t.nii.gz", "--lesions-out", "l.txt"], "--lesions-out"),
    (["--model", "no-such-model", "--trus", "t.nii.gz"], "--model no-such-model"),
])
def test_segment_names_a_missing_or_unused_input_in_one_line(tmp_path, capsys, arguments, option):
    assert main(["segment", *arguments, "--out", str(tmp_path / "s.seg.nrrd")]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {option}") and "\n" not in error
    assert not list(tmp_path.iterdir())


def test_segment_writes_lesions_probabilities_and_named_coloured_segments(tmp_path, capsys):
    grid = oblique_grid((40, 36, 30), (0.8, 0.8, 0.8))
    trus = tmp_path / "trus.nii.gz"
    sitk.WriteImage(blob(grid, grid.TransformContinuousIndexToPhysicalPoint((20.0, 18.0, 15.0)), 8.0), str(trus))
    out, lesions_csv = tmp_path / "tumour.seg.nrrd", tmp_path / "lesions.csv"
    assert main(["--progress", "none", "segment", "--trus", str(trus), "--model", "trus-unet", "--device", "cpu",
                 "--threshold", "0.05", "--min-volume", "0", "--out", str(out), "--lesions-out", str(lesions_csv),
                 "--probabilities-out", str(tmp_path / "p.nii.gz")]) == 0
    label, segments = read_seg_nrrd(out)
    assert _same_grid(label, sitk.ReadImage(str(trus)), atol=1e-5)
    assert [(s.name, s.label_value, s.color) for s in segments] == \
        [(s.name, s.label_value, s.color) for s in default_segments(len(segments))[1:]]
    with open(lesions_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(segments)
    voxel_ml = np.prod(label.GetSpacing()) / 1000
    for row, segment in zip(rows, segments):
        count = int(np.count_nonzero(sitk.GetArrayViewFromImage(label) == segment.label_value))
        assert int(row["voxels"]) == count and float(row["volume_ml"]) == pytest.approx(count * voxel_ml)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["model"] == "trus-unet"


@pytest.mark.skipif(not (MRUS / "fixed_images").is_dir() or not default_weights_path("gland-trus").is_file(),
                    reason="needs ../shared/data/mrus-example and the bundled gland-trus weights")
def test_gland_trus_on_a_validation_case_through_the_command(tmp_path):
    out = tmp_path / "gland.seg.nrrd"
    trus = MRUS / "fixed_images" / f"{VALIDATION_CASE}.nii.gz"
    assert main(["--progress", "none", "segment", "--trus", str(trus), "--model", "gland-trus", "--device", "cpu",
                 "--out", str(out)]) == 0
    label, segments = read_seg_nrrd(out)
    assert [(s.name, s.label_value) for s in segments] == [("gland", 1)]
    truth = read_label_channels(MRUS / "fixed_labels" / f"{VALIDATION_CASE}.nii.gz")[0]
    assert _same_grid(label, read_volume(trus), atol=1e-5) and dice(label, truth) > 0.75


@pytest.mark.skipif(not (MRUS / "moving_images").is_dir() or not default_weights_path("gland-mri").is_file(),
                    reason="needs ../shared/data/mrus-example and the bundled gland-mri weights")
def test_gland_mri_on_a_validation_case_through_the_command(tmp_path):
    out = tmp_path / "gland.nii.gz"
    mri = MRUS / "moving_images" / f"{VALIDATION_CASE}.nii.gz"
    assert main(["--progress", "none", "segment", "--mri", str(mri), "--model", "gland-mri", "--device", "cpu",
                 "--tta", "--out", str(out)]) == 0
    label = sitk.ReadImage(str(out))
    truth = read_label_channels(MRUS / "moving_labels" / f"{VALIDATION_CASE}.nii.gz")[0]
    assert _same_grid(label, read_volume(mri), atol=1e-5) and dice(label, truth) > 0.8


@pytest.mark.parametrize("name", ["gland-trus", "gland-mri"])
def test_gland_configs_train_the_registered_model_away_from_the_test_set(name):
    from MRITRUSFusionLib.training import load_config
    from MRITRUSFusionLib.training.file_data import list_cases

    config = load_config(Path(__file__).resolve().parents[1] / "MRITRUSFusionLib" / "configs" / f"{name}.yaml")
    spec = MODELS[name]
    assert config.model.name == name and config.data.label_channel == 0 and config.data.crop_around is None
    assert config.spacing_mm == spec.spacing_mm and tuple(config.patch_size) == spec.patch_size
    assert config.augmentation.enabled
    if (MRUS / "fixed_images").is_dir():
        lists = list_cases(config.data.model_copy(update={"path": MRUS}))
        used = {case.name for case in lists.training + lists.validation}
        assert used == {f"obs{k:03d}" for k in range(80)}
