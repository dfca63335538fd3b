"""TRUS tumour segmentation: output geometry, bundled weights, checkpoint errors, training configs and runs."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.metrics import dice
from MRITRUSFusionLib.phantom import _rotation_matrix, generate_phantom, make_grid
from MRITRUSFusionLib.segmentation import (
    default_weights_path,
    load_model,
    remove_small_components,
    resolve_device,
    segment_trus,
)
from MRITRUSFusionLib.segmentation.checkpoints import make_checkpoint, save_checkpoint
from MRITRUSFusionLib.segmentation.models import BUNDLED_MODELS_DIR, ENV_MODELS
from MRITRUSFusionLib.segmentation.networks import build_trus_unet
from MRITRUSFusionLib.training import HELD_OUT_PHANTOM_SEEDS, config_from_dict, load_config, train
from MRITRUSFusionLib.training.config import TrainingConfig

EXPECTED = "'trus-unet' (MONAI UNet 3D, 1→2 channels)"
ARGUMENTS = {"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1}
CONFIG = BUNDLED_MODELS_DIR.parents[1] / "MRITRUSFusionLib" / "configs" / "trus-unet.yaml"


@pytest.fixture(scope="module")
def model():
    """The bundled trus-unet on the CPU."""
    return load_model("trus-unet", device="cpu")


def _oblique(image: sitk.Image, interpolator: int) -> sitk.Image:
    """``image`` resampled onto an oblique, anisotropic grid around the same centre."""
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    grid = make_grid((66, 58, 40), (0.7, 0.9, 1.3), _rotation_matrix((12.0, -8.0, 25.0)), centre)
    return sitk.Resample(image, grid, sitk.Transform(), interpolator, 0.0, image.GetPixelID())


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and a.GetOrigin() == b.GetOrigin() and a.GetSpacing() == b.GetSpacing()
            and a.GetDirection() == b.GetDirection())


def test_output_lies_on_an_oblique_anisotropic_input_grid(model):
    case = generate_phantom(seed=1001)
    trus = _oblique(case.trus, sitk.sitkLinear)
    truth = _oblique(case.trus_tumours, sitk.sitkNearestNeighbor)
    label, probability = segment_trus(trus, model=model, return_probability=True)
    assert _same_grid(label, trus) and _same_grid(probability, trus)
    assert label.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(label))) <= {0, 1}
    values = sitk.GetArrayViewFromImage(probability)
    assert values.min() >= 0.0 and values.max() <= 1.0
    # The tumour is found where it is, so no axis was flipped or swapped on the way.
    assert dice(label, truth) > 0.5


def test_bundled_weights_segment_a_held_out_phantom(model):
    seed = 1003
    assert seed in HELD_OUT_PHANTOM_SEEDS
    case = generate_phantom(seed=seed)
    label = segment_trus(case.trus, model=model)
    assert _same_grid(label, case.trus)
    assert dice(label, case.trus_tumours) >= 0.6


def test_weights_are_found_in_the_models_environment_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_MODELS, raising=False)
    assert default_weights_path("trus-unet") == BUNDLED_MODELS_DIR / "trus-unet.pt"
    (tmp_path / "trus-unet.pt").write_bytes(b"")
    monkeypatch.setenv(ENV_MODELS, str(tmp_path))
    assert default_weights_path("trus-unet") == tmp_path / "trus-unet.pt"


def test_missing_weights_name_the_expected_architecture(tmp_path):
    with pytest.raises(InputError, match="file not found") as error:
        load_model("trus-unet", tmp_path / "nothing.pt", device="cpu")
    assert EXPECTED in str(error.value)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = save_checkpoint(make_checkpoint("foo", ARGUMENTS, build_trus_unet(), 0.8, (64, 64, 64),
                                           "zscore-foreground"), tmp_path / "foo.pt")
    with pytest.raises(InputError) as error:
        load_model("trus-unet", path, device="cpu")
    assert str(error.value) == f"weights {path}: checkpoint is for 'foo', expected {EXPECTED}"


def test_incompatible_state_dict_is_refused(tmp_path):
    wider = {**ARGUMENTS, "channels": [8, 16, 32, 128]}
    path = save_checkpoint(make_checkpoint("trus-unet", ARGUMENTS, build_trus_unet(**wider), 0.8, (64, 64, 64),
                                           "zscore-foreground"), tmp_path / "wider.pt")
    with pytest.raises(InputError, match="state dict does not match") as error:
        load_model("trus-unet", path, device="cpu")
    assert EXPECTED in str(error.value)


def test_foreign_files_are_refused(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable PyTorch checkpoint"):
        load_model("trus-unet", garbage, device="cpu")
    bare = tmp_path / "bare.pt"
    torch.save(build_trus_unet().state_dict(), bare)
    with pytest.raises(InputError, match="checkpoint lacks model"):
        load_model("trus-unet", bare, device="cpu")
    with pytest.raises(InputError, match="unknown model"):
        load_model("no-such-model", bare, device="cpu")


def test_device_selection():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda")


def test_small_components_are_dropped():
    array = np.zeros((20, 20, 20), np.uint8)
    array[2:4, 2:4, 2:4] = 1  # 8 mm³
    array[10:16, 10:16, 10:16] = 1  # 216 mm³
    mask = sitk.GetImageFromArray(array)
    mask.SetOrigin((3.0, -2.0, 1.0))
    kept = remove_small_components(mask, 50.0)
    assert _same_grid(kept, mask)
    assert sitk.GetArrayViewFromImage(kept).sum() == 216


def test_bundled_config_is_valid():
    config = load_config(CONFIG)
    assert config.model.name == "trus-unet"
    assert not set(range(config.data.seed_start, config.data.seed_start + config.data.count)) & set(
        HELD_OUT_PHANTOM_SEEDS)


@pytest.mark.parametrize("values, message", [
    ({"data": {"seeds_start": 3}}, "unknown key 'data.seeds_start'"),
    ({"learning_rate": 0.1}, "unknown key 'learning_rate'"),
    ({"iterations": "many"}, "key 'iterations': Input should be a valid integer"),
    ({"patch_size": [64, 64]}, "key 'patch_size': expected 3 values"),
    ({"data": {"n_tumours": [3, 1]}}, "key 'data.n_tumours': n_tumours must be"),
    ({"optimiser": {"lr": "fast"}}, "key 'optimiser.lr'"),
    ({"model": {"name": "foo"}}, "key 'model.name': unknown model 'foo'"),
    ({"data": {"seed_start": 990, "count": 20}}, "held-out phantom seeds"),
])
def test_config_errors_name_the_key(values, message):
    with pytest.raises(InputError, match="^config: .*" + message.replace("[", r"\[").replace("(", r"\(")):
        config_from_dict(values)


def test_config_errors_from_yaml_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("iterations: 2\nbatchsize: 4\n")
    with pytest.raises(InputError, match=f"^config {path}: unknown key 'batchsize'$"):
        load_config(path)
    path.write_text("iterations: [2\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(path)


def _tiny_config(tmp_path) -> TrainingConfig:
    return config_from_dict({
        "model": {"arguments": {"channels": [4, 8], "strides": [2], "num_res_units": 0}},
        "data": {"count": 1, "seed_start": 7}, "patch_size": [16, 16, 16], "iterations": 2, "batch_size": 2,
        "seed": 3, "device": "cpu", "output": str(tmp_path / "default.pt"), "log_every": 0,
    })


def test_tiny_training_is_deterministic_and_loadable(tmp_path):
    config = _tiny_config(tmp_path)
    first = train(config, out=tmp_path / "a.pt")
    second = train(config, out=tmp_path / "b.pt")
    a = torch.load(first, weights_only=True)
    b = torch.load(second, weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["model"] == "trus-unet" and a["patch_size"] == [16, 16, 16] and a["spacing_mm"] == 0.8
    loaded = load_model("trus-unet", first, device="cpu")
    assert loaded.patch_size == (16, 16, 16)
    assert list(tmp_path.glob(".*part*")) == []  # atomic: no temporary file left behind
