"""The tumour models that use the MRI (``concat``, ``reg-enhanced``, ``csad``): registry entries through the inference
path, their training losses, phases and phantom data, and a few training steps of each. Tiny volumes and
networks: each test < 10 s."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MRITRUSFusionLib.cli import main
from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.io import read_transform, write_transform, write_volume
from MRITRUSFusionLib.phantom import _rotation_matrix, generate_phantom, make_grid, write_phantom_case
from MRITRUSFusionLib.segmentation.checkpoints import make_checkpoint, save_checkpoint
from MRITRUSFusionLib.segmentation.inference import check_inputs, target_probability
from MRITRUSFusionLib.segmentation.models import BUNDLED_MODELS_DIR, MODELS, load_model
from MRITRUSFusionLib.segmentation.networks.stacked import StackedInputs
from MRITRUSFusionLib.training import config_from_dict, load_config, train
from MRITRUSFusionLib.training.config import LossSection
from MRITRUSFusionLib.training.fusion_data import FusionSampler, misaligned, phantom_roles, rigid_error
from MRITRUSFusionLib.training.phases import apply_phase, plan_phases
from MRITRUSFusionLib.training.tasks import task_for

CONFIGS = BUNDLED_MODELS_DIR.parents[1] / "MRITRUSFusionLib" / "configs"
#: Tiny builder arguments of each model (reg-enhanced: a 16³ grid, the smallest its ViT branch takes).
TINY = {
    "concat": {"channels": [4, 8], "strides": [2], "num_res_units": 0, "in_channels": 2},
    "reg-enhanced": {"spatial_size": [16, 16, 16], "channels": [4, 8], "strides": [2], "num_res_units": 0,
                     "registration_args": {"hidden_size": 8, "num_layers": 1, "num_heads": 2, "mlp_dim": 8}},
    "csad": {"spatial_dims": 3, "channels": [4, 8]},
}
#: Phantom grids of the tiny trainings: 76.8 mm TRUS and ~80 mm MRI boxes, 16³ voxels at 4.8 mm.
TINY_DATA = {"count": 1, "seed_start": 11, "trus_size": [32, 32, 32], "trus_spacing": [2.4, 2.4, 2.4],
             "mri_size": [32, 32, 24], "mri_spacing": [2.5, 2.5, 3.5], "n_tumours": [1, 1],
             "tumour_radius_mm": [7.0, 9.0]}


def _grid(size, spacing, centre=(10.0, -20.0, 35.0), degrees=(12.0, -8.0, 25.0)) -> sitk.Image:
    """A random-valued float32 image on an oblique grid."""
    image = make_grid(size, spacing, _rotation_matrix(degrees), centre)
    values = np.random.default_rng(0).uniform(0.1, 1.0, size=tuple(reversed(size))).astype(np.float32)
    filled = sitk.GetImageFromArray(values)
    filled.CopyInformation(image)
    return filled


def _tiny_weights(name: str, folder: Path, patch=(16, 16, 16), spacing_mm: float = 1.0) -> Path:
    """An untrained checkpoint of model ``name`` with the tiny arguments."""
    spec = MODELS[name]
    network = spec.builder(**TINY[name])
    return save_checkpoint(make_checkpoint(name, TINY[name], network, spacing_mm, patch, spec.normalisation),
                           folder / f"{name}.pt")


def _same_grid(a: sitk.Image, b: sitk.Image, atol: float = 0.0) -> bool:
    """Same size, and origin, spacing and direction equal up to ``atol`` (files store float32 geometry)."""
    return a.GetSize() == b.GetSize() and all(
        np.allclose(getattr(a, f"Get{key}")(), getattr(b, f"Get{key}")(), rtol=0, atol=atol)
        for key in ("Origin", "Spacing", "Direction"))


# ------------------------------------------------------------------------------ registry and inference
@pytest.mark.parametrize("name, images", [
    ("concat", ("trus", "mri")), ("reg-enhanced", ("trus", "mri")), ("csad", ("mri", "adc")), ("csad", ("mri",))])
def test_registry_entries_segment_a_non_multiple_of_patch_volume_on_its_grid(tmp_path, name, images):
    # 23 x 19 x 29 voxels of 0.9 x 1.1 x 0.7 mm: 21 x 21 x 21 voxels at the model's 1 mm, two windows per axis.
    volumes = {"trus": _grid((23, 19, 29), (0.9, 1.1, 0.7)),
               "mri": _grid((26, 24, 20), (1.0, 1.0, 1.2), degrees=(0.0, 5.0, 0.0)),
               "adc": _grid((26, 24, 20), (1.0, 1.0, 1.2), degrees=(0.0, 5.0, 0.0))}
    model = load_model(name, _tiny_weights(name, tmp_path), device="cpu")
    transform = sitk.TranslationTransform(3, [1.0, -2.0, 0.5]) if "trus" in MODELS[name].inputs else None
    probability = target_probability({role: volumes[role] for role in images}, model, transform)
    assert _same_grid(probability, volumes[MODELS[name].inputs[0]])
    values = sitk.GetArrayViewFromImage(probability)
    assert np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0


def test_stacked_inputs_pass_one_channel_per_argument_and_return_the_logits():
    network = MODELS["csad"].builder(**TINY["csad"]).eval()
    t2w, adc = torch.randn(1, 1, 16, 16, 16), torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(StackedInputs(network)(torch.cat([t2w, adc], 1)), network(t2w, adc)["logits"])
        assert torch.equal(StackedInputs(network)(t2w), network(t2w)["logits"])  # T2W-only path


def test_csad_takes_the_mri_with_or_without_adc_and_nothing_else():
    spec = MODELS["csad"]
    check_inputs(spec, ["mri"], False)
    check_inputs(spec, ["mri", "adc"], False)
    with pytest.raises(InputError, match=r"^--mri: model 'csad' needs it \(it takes --mri \+ \[--adc\]\)"):
        check_inputs(spec, ["adc"], False)
    with pytest.raises(InputError, match="^--trus: model 'csad' does not use it"):
        check_inputs(spec, ["mri", "trus"], False)
    with pytest.raises(InputError, match="^--transform: model 'reg-enhanced' resamples the MRI"):
        check_inputs(MODELS["reg-enhanced"], ["trus", "mri"], False)


# ----------------------------------------------------------------------------------------- losses
#: Two slices of 2 x 2 voxels: logits (0, 0), tumour (p = 0.5 each class); logits (0, ln 3), background
#: (p = 0.25, 0.75). Every ratio below is that of one voxel of each kind.
LOGITS = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]]).T.reshape(1, 2, 2, 1, 1).expand(1, 2, 2, 2, 2)
LABEL = torch.tensor([1, 0]).reshape(1, 1, 2, 1, 1).expand(1, 1, 2, 2, 2)
#: Pooled Dice (Eq. 12): 1 - 2 (0.5 + 0.25) / (2 + 2); focal (γ 2): mean of 0.5² ln 2 and 0.75² ln 4.
HAND_DICE = 1 - 2 * 0.75 / 4
HAND_FOCAL = (0.25 * math.log(2) + 0.5625 * math.log(4)) / 2


def _task(name: str, loss: dict, **extra):
    return task_for(config_from_dict({"model": {"name": name}, "loss": loss, **extra}))


def test_dice_focal_of_a_segmentation_config_matches_hand_values():
    loss = _task("trus-unet", {"name": "dice_focal"}).loss_function(LossSection(name="dice_focal", lambda_focal=0.5))
    assert float(loss(LOGITS, LABEL)) == pytest.approx(HAND_DICE + 0.5 * HAND_FOCAL, abs=1e-5)


def test_joint_terms_add_segmentation_and_registration_terms_as_weighted():
    task = _task("reg-enhanced", {"name": "terms", "terms": [{"name": "dice-focal", "weight": 2.0},
                                                            {"name": "vit-affine", "weight": 5.0}]},
                 patch_size=[16, 16, 16])
    gland = torch.zeros(1, 1, 2, 2, 2)
    gland[:, :, 0] = 1
    distribution = torch.log(torch.tensor([[0.3, 0.7]]))
    outputs = {"logits": LOGITS, "ddf": torch.zeros(1, 3, 2, 2, 2), "fixed_log_distribution": distribution,
               "moving_log_distribution": distribution}
    batch = {"label": LABEL, "fixed_label": gland, "moving_label": gland}
    # Identical labels under a zero DDF and identical distributions: both registration terms are 0.
    assert float(task.loss_function(task.config.loss)(outputs, batch)["total"]) == pytest.approx(
        2.0 * (HAND_DICE + HAND_FOCAL), abs=1e-5)


def test_csad_term_reads_the_tumour_logit_and_the_label():
    task = _task("csad", {"name": "terms", "terms": [{"name": "csad", "arguments": {"bce_weight": 0.1}}]})
    # Tumour logits l1 - l0: 0 (p̂ 0.5, tumour) and ln 3 (p̂ 0.75, background), 4 voxels each; Dice smoothing 1;
    # no attention maps: no CSAD term.
    dice = 1 - (2 * 4 * 0.5 + 1) / (4 * (0.5 + 0.75) + 4 + 1)
    wbce = (-0.95 * math.log(0.5) - 0.05 * math.log(0.25)) / 2
    total = task.loss_function(task.config.loss)({"logits": LOGITS}, {"label": LABEL})["total"]
    assert float(total) == pytest.approx(dice + 0.1 * wbce, abs=1e-5)


# ---------------------------------------------------------------------------------- configs, phases
def test_reg_enhanced_config_pretrains_the_registration_branch_then_trains_the_unet_on_it():
    config = load_config(CONFIGS / "reg-enhanced.yaml")
    network, _ = task_for(config).build()
    registration = {name for name, _ in network.named_parameters() if name.startswith("registration.")}
    first, second = plan_phases(config)
    for phase, trained, loss in ((first, registration, ["vit-affine"]), (second, None, ["dice-ce"])):
        apply_phase(phase, network)
        names = {name for name, parameter in network.named_parameters() if parameter.requires_grad}
        assert names == (trained or {name for name, _ in network.named_parameters()} - registration) and names
        assert [term.name for term in (phase.loss or config.loss).terms] == loss
    assert config.iterations == first.iterations + second.iterations


@pytest.mark.parametrize("change, message", [
    ({"phases": [{"iterations": 2, "loss": {"name": "terms", "terms": [{"name": "dice-focus"}]}}]},
     r"config key 'phases\[0\].loss.terms\[0\].name': unknown term 'dice-focus'"),
    ({"loss": {"name": "mse"}}, "config key 'loss.name': model 'concat' is trained with"),
    ({"validation": {"metric": "tre"}}, "config key 'validation.metric': model 'concat' is scored by 'dice'"),
])
def test_fusion_configs_name_the_bad_key(change, message):
    with pytest.raises(InputError, match=message):
        task_for(config_from_dict({"model": {"name": "concat"}, **change}))


def test_reg_enhanced_refuses_file_data(tmp_path):
    (tmp_path / "fixed_images").mkdir()
    config = config_from_dict({"model": {"name": "reg-enhanced"}, "loss": {"name": "terms", "terms": [
        {"name": "vit-affine"}]}, "data": {"source": "deepreg", "path": str(tmp_path)}, "patch_size": [16, 16, 16]})
    with pytest.raises(InputError, match="'reg-enhanced' trains on phantoms"):
        task_for(config).build_source(config, 0, 1)


# ------------------------------------------------------------------------------------ phantom data
def test_misaligned_applies_the_error_first_and_survives_an_h5_file(tmp_path):
    case = generate_phantom(seed=3, trus_size=(24, 24, 24), trus_spacing=(3.2, 3.2, 3.2), mri_size=(24, 24, 16),
                            mri_spacing=(3.0, 3.0, 4.5))
    error = rigid_error(np.random.default_rng(0), (5.0, -20.0, 40.0), 6.0, 5.0)
    written = read_transform(write_transform(misaligned(case.transform, error), tmp_path / "t.h5"))
    for point in ([0.0, -30.0, 45.0], [12.0, -22.0, 50.0]):
        expected = case.transform.TransformPoint(error.TransformPoint(point))
        assert np.allclose(written.TransformPoint(point), expected, atol=1e-6)
    assert 0 < np.linalg.norm(error.GetTranslation()) <= 6.0
    assert max(abs(a) for a in (error.GetAngleX(), error.GetAngleY(), error.GetAngleZ())) <= math.radians(5.0)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_phantom_samples_bring_the_mri_onto_the_trus_with_the_configured_error():
    def sampler(mm: float) -> FusionSampler:
        config = config_from_dict({"model": {"name": "reg-enhanced"}, "loss": {"name": "terms", "terms": [
            {"name": "vit-affine"}]}, "data": {**TINY_DATA, "mri_misalignment_mm": mm}, "spacing_mm": 2.4,
            "patch_size": [32, 32, 32]})
        return FusionSampler(config, ("trus", "mri"), "zscore-foreground", registration_labels=True)

    exact, shifted = sampler(0.0), sampler(12.0)
    case = exact.case(11)
    aligned = exact.arrays(case, np.random.default_rng(0))
    # The true transform puts the MRI gland on the TRUS gland (nearest-neighbour labels of two grids).
    assert _dice(aligned["moving_label"] > 0, aligned["fixed_label"] > 0) > 0.9
    assert aligned["image"].shape == (2, 32, 32, 32)
    moved = [shifted.arrays(case, np.random.default_rng(seed)) for seed in range(4)]
    assert min(_dice(m["moving_label"] > 0, m["fixed_label"] > 0) for m in moved) < 0.85
    assert all(np.array_equal(m["fixed_label"], aligned["fixed_label"]) for m in moved)  # the TRUS never moves


# -------------------------------------------------------------------------------------- training
def _tiny_training(name: str, tmp_path: Path, **extra) -> dict:
    losses = {"concat": {"name": "dice_ce"},
              "csad": {"name": "terms", "terms": [{"name": "csad"}]},
              "reg-enhanced": {"name": "terms", "terms": [{"name": "dice-ce"}, {"name": "vit-affine"}]}}
    arguments = {key: value for key, value in TINY[name].items() if key != "spatial_size"}
    return {"model": {"name": name, "arguments": arguments}, "loss": losses[name], "data": dict(TINY_DATA),
            "patch_size": [16, 16, 16], "spacing_mm": 4.8, "iterations": 2, "batch_size": 2, "seed": 1,
            "device": "cpu", "output": str(tmp_path / f"{name}.pt"), "log_every": 0, **extra}


@pytest.mark.parametrize("name", ["concat", "csad"])
def test_a_few_training_steps_give_a_model_segment_loads(tmp_path, name):
    path = train(_tiny_training(name, tmp_path, validation={"seeds": [12]}))
    model = load_model(name, path, device="cpu")
    assert model.spacing_mm == 4.8 and model.patch_size == (16, 16, 16)
    assert model.metadata["metrics"]["validation_mean"] >= 0.0


#: Own data in the README's layout: DeepReg folders plus the MRI resampled onto each TRUS (``mri_in_trus/``, e.g.
#: by ``mritrus-fusion warp``), an ADC on the MRI grid (``adc/``) and lesion ids on each image
#: (``fixed_tumour_labels/``, ``moving_tumour_labels/``, as ``mritrus-fusion phantom`` writes them).
OWN_DATA = {"concat": {"image": ["fixed_image", "mri_in_trus"], "label": "fixed_tumour_labels",
                       "reference": "fixed_image", "crop_around": "fixed_label"},
            "csad": {"image": ["moving_image", "adc"], "label": "moving_tumour_labels",
                     "reference": "moving_image", "crop_around": "moving_label"}}


@pytest.mark.parametrize("name", sorted(OWN_DATA))
def test_models_train_on_own_files_with_the_documented_roles(tmp_path, name):
    for seed in (21, 22):
        case = generate_phantom(seed=seed, trus_size=(32, 32, 32), trus_spacing=(2.4, 2.4, 2.4),
                                mri_size=(32, 32, 24), mri_spacing=(2.5, 2.5, 3.5), n_tumours=2)
        write_phantom_case(case, tmp_path / "data", f"case{seed}")
        write_volume(sitk.Resample(case.mri, case.trus, case.transform),
                     tmp_path / "data" / "mri_in_trus" / f"case{seed}.nii.gz")
        write_volume(phantom_roles(case, ("adc",), seed)["adc"], tmp_path / "data" / "adc" / f"case{seed}.nii.gz")
    values = _tiny_training(name, tmp_path, data={"source": "deepreg", "path": str(tmp_path / "data"),
                                                  "cases": ["case21"], "validation_cases": ["case22"],
                                                  **OWN_DATA[name]})
    model = load_model(name, train(values), device="cpu")
    assert model.metadata["metrics"]["validation_dice"].keys() == {"case22"}
    with pytest.raises(InputError, match=rf"config key 'data.image': model '{name}' takes 2 images"):
        train({**values, "data": {**values["data"], "image": OWN_DATA[name]["image"][:1]}})


def test_reg_enhanced_phase_one_trains_only_the_registration_branch(tmp_path):
    values = _tiny_training("reg-enhanced", tmp_path, phases=[
        {"name": "registration", "iterations": 2, "trainable": ["registration."],
         "loss": {"name": "terms", "terms": [{"name": "vit-affine"}]}},
        {"name": "segmentation", "iterations": 1}])
    values.pop("iterations")
    config = config_from_dict(values)
    torch.manual_seed(config.seed)
    untrained = task_for(config).build()[0].state_dict()
    after_phase_one = torch.load(train(config, stop_after=2), weights_only=True)["state_dict"]
    changed = {key for key in untrained if not torch.equal(untrained[key], after_phase_one[key])}
    assert changed and all(key.startswith("registration.") for key in changed)
    final = load_model("reg-enhanced", train(config, resume=True), device="cpu")
    assert isinstance(final.network, StackedInputs) and final.patch_size == (16, 16, 16)


# ------------------------------------------------------------------------------ bundled weights
@pytest.mark.parametrize("name, options", [
    ("concat", ["--trus", "--mri", "--transform"]), ("reg-enhanced", ["--trus", "--mri", "--transform"]),
    ("csad", ["--mri"]), ("csad", ["--mri", "--adc"])])
def test_segment_runs_every_model_with_its_bundled_weights(tmp_path, capsys, name, options):
    case = generate_phantom(seed=1001, trus_size=(48, 48, 48), trus_spacing=(1.6, 1.6, 1.6), mri_size=(56, 56, 40),
                            mri_spacing=(1.4, 1.4, 2.0))
    files = {"--trus": (case.trus, "trus.nii.gz"), "--mri": (case.mri, "mri.nii.gz"),
             "--adc": (case.mri, "adc.nii.gz")}
    arguments = []
    for option in options:
        if option == "--transform":
            arguments += [option, str(write_transform(case.transform, tmp_path / "t.h5"))]
        else:
            sitk.WriteImage(files[option][0], str(tmp_path / files[option][1]))
            arguments += [option, str(tmp_path / files[option][1])]
    out = tmp_path / "seg.nii.gz"
    assert main(["--progress", "none", "segment", "--model", name, *arguments, "--out", str(out),
                 "--device", "cpu"]) == 0
    reference = case.mri if name == "csad" else case.trus
    assert _same_grid(sitk.ReadImage(str(out)), reference, atol=1e-4)
