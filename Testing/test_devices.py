"""CUDA out of memory during inference: a one-line warning and a CPU rerun with the CPU's exact result when the
fallback is allowed (``--device auto``), one clear error line when it is not (``--device cuda``).

No GPU is needed: the accelerator is played by PyTorch's ``meta`` device, and the network's forward raises
``torch.cuda.OutOfMemoryError`` for inputs on it, as a CUDA allocation failure would. For Attention-Reg the
weights really move there (so the CPU rerun must reload them); segmentation and learned registration models
only claim to be there (their CPU rerun moves the network, which from ``meta`` would have no data to move).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MRITRUSFusionLib.cli import main
from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.io import write_volume
from MRITRUSFusionLib.phantom import generate_phantom
from MRITRUSFusionLib.registration.learned import attention_reg_infer
from MRITRUSFusionLib.registration.learned.attention_reg import AttentionReg
from MRITRUSFusionLib.registration.learned.attention_reg_infer import register_attention_reg
from MRITRUSFusionLib.registration.learned.baselines import build_globalnet
from MRITRUSFusionLib.registration.learned.infer import register_batch
from MRITRUSFusionLib.registration.learned.models import LoadedRegistration, registration_spec
from MRITRUSFusionLib.segmentation.checkpoints import make_checkpoint, save_checkpoint
from MRITRUSFusionLib.segmentation import inference
from MRITRUSFusionLib.segmentation.inference import tumour_probability
from MRITRUSFusionLib.segmentation.models import load_model
from MRITRUSFusionLib.segmentation.networks import build_trus_unet

OOM = "CUDA out of memory. Tried to allocate 1.50 GiB"
ACCELERATOR = torch.device("meta")


@pytest.fixture(scope="module")
def pair():
    case = generate_phantom(seed=3, trus_size=(48, 48, 48), trus_spacing=(1.6, 1.6, 1.6),
                            mri_size=(40, 40, 28), mri_spacing=(2.0, 2.0, 3.0))
    return case.trus, case.mri


@pytest.fixture(scope="module")
def cpu_transform(pair):
    """Attention-Reg on the CPU, before any patching: the result a fallback must reproduce exactly."""
    return register_attention_reg(*pair, device="cpu")


def raise_oom_off_cpu(forward):
    """``forward`` that raises CUDA's out-of-memory error for inputs on the accelerator."""
    def patched(self, *inputs, **options):
        if inputs[0].device == ACCELERATOR:
            raise torch.cuda.OutOfMemoryError(f"{OOM} (GPU 0; 7.79 GiB total capacity)\nmore detail")
        return forward(self, *inputs, **options)
    return patched


def patch_accelerator(monkeypatch) -> None:
    """Any requested device resolves to the accelerator, where every network call runs out of memory."""
    monkeypatch.setattr(attention_reg_infer, "resolve_device", lambda device: ACCELERATOR)
    monkeypatch.setattr(AttentionReg, "forward", raise_oom_off_cpu(AttentionReg.forward))


@pytest.fixture
def full_accelerator(monkeypatch):
    patch_accelerator(monkeypatch)


def fallback_warnings(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and OOM in r.getMessage()]


def parameters(transform: sitk.Transform) -> tuple:
    return tuple(transform.GetParameters()) + tuple(transform.GetFixedParameters())


@pytest.mark.parametrize("device, allow", [("auto", None), ("cuda", True)])
def test_out_of_memory_reruns_on_cpu_with_one_warning(pair, cpu_transform, full_accelerator, caplog, device, allow):
    with caplog.at_level(logging.WARNING, logger="MRITRUSFusionLib"):
        transform = register_attention_reg(*pair, device=device, allow_cpu_fallback=allow)
    assert parameters(transform) == parameters(cpu_transform)
    warnings = fallback_warnings(caplog)
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith("warning: attention-reg registration: ")
    assert "on meta; running on the CPU instead" in warnings[0]


@pytest.mark.parametrize("device, allow", [("cuda", None), ("auto", False)])
def test_out_of_memory_without_fallback_is_one_clear_error(pair, full_accelerator, caplog, device, allow):
    with pytest.raises(InputError) as error:
        register_attention_reg(*pair, device=device, allow_cpu_fallback=allow)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"attention-reg registration: {OOM}")
    assert "--device cpu" in message and "--device auto" in message
    assert not fallback_warnings(caplog)


def test_cli_warns_once_and_writes_the_cpu_result(pair, monkeypatch, tmp_path, capsys):
    fixed, moving = (write_volume(image, tmp_path / f"{name}.nii.gz") for name, image in zip("fm", pair))
    register = ["--progress", "none", "register", "--fixed", str(fixed), "--moving", str(moving),
                "--method", "attention-reg", "--transform-out"]
    assert main(register + [str(tmp_path / "cpu.tfm"), "--device", "cpu"]) == 0
    patch_accelerator(monkeypatch)
    assert main(register + [str(tmp_path / "T.tfm"), "--device", "cuda"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: attention-reg registration: CUDA out of memory")
    assert not (tmp_path / "T.tfm").exists()

    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as for a CLI user: Python's last-resort handler
    assert main(register + [str(tmp_path / "T.tfm"), "--device", "auto"]) == 0
    stderr = capsys.readouterr().err.strip().splitlines()
    assert len(stderr) == 1 and stderr[0].startswith("warning: attention-reg registration: CUDA out of memory")
    assert (tmp_path / "T.tfm").read_bytes() == (tmp_path / "cpu.tfm").read_bytes()


# ------------------------------------------------------------------------------------------------ segmentation
@pytest.fixture(scope="module")
def unet_weights(tmp_path_factory):
    """A tiny trus-unet checkpoint (random weights: the probabilities only have to be reproducible)."""
    arguments = {"channels": [4, 8], "strides": [2], "num_res_units": 0}
    torch.manual_seed(0)
    checkpoint = make_checkpoint("trus-unet", arguments, build_trus_unet(**arguments), 2.4, [16, 16, 16],
                                 "zscore-foreground")
    return save_checkpoint(checkpoint, tmp_path_factory.mktemp("unet") / "unet.pt")


def on_full_accelerator(monkeypatch, weights, device: str, monai_wrapped: bool = False):
    """The model loaded for ``device``, claiming to live on the accelerator, where the sliding windows run out of
    memory (``monai_wrapped``: in a ``RuntimeError`` raised from it, as MONAI's importance map does)."""
    model = load_model("trus-unet", weights, device="cpu" if device == "cuda" else device)
    model.device = ACCELERATOR
    original = inference.sliding_window_inference

    def sliding_windows(inputs, *arguments, **options):
        if inputs.device != ACCELERATOR:
            return original(inputs, *arguments, **options)
        error = torch.cuda.OutOfMemoryError(f"{OOM} (GPU 0; 7.79 GiB total capacity)")
        if monai_wrapped:
            raise RuntimeError("patch size (16, 16, 16), mode=gaussian\nSeems to be OOM.") from error
        raise error
    monkeypatch.setattr(inference, "sliding_window_inference", sliding_windows)
    return model


@pytest.mark.parametrize("monai_wrapped", [False, True])
def test_segmentation_moves_to_cpu_on_out_of_memory(pair, unet_weights, monkeypatch, caplog, monai_wrapped):
    expected = sitk.GetArrayFromImage(tumour_probability(pair[0], model=load_model("trus-unet", unet_weights, "cpu")))
    model = on_full_accelerator(monkeypatch, unet_weights, "auto", monai_wrapped)
    assert model.cpu_fallback
    with caplog.at_level(logging.WARNING, logger="MRITRUSFusionLib"):
        probability = tumour_probability(pair[0], model=model)
    assert np.array_equal(sitk.GetArrayFromImage(probability), expected)
    warnings = fallback_warnings(caplog)
    assert len(warnings) == 1 and warnings[0].startswith("warning: segmentation (trus-unet): CUDA out of memory")
    assert model.device == torch.device("cpu"), "the model stays on the CPU for the next cases"


def test_segmentation_out_of_memory_on_explicit_cuda_is_one_clear_error(pair, unet_weights, monkeypatch):
    model = on_full_accelerator(monkeypatch, unet_weights, "cuda")
    assert not model.cpu_fallback
    with pytest.raises(InputError, match=r"^segmentation \(trus-unet\): CUDA out of memory\. .* on meta; use "
                                         r"--device cpu, or --device auto to fall back to the CPU$"):
        tumour_probability(pair[0], model=model)


def test_other_runtime_errors_are_not_taken_for_out_of_memory(pair, unet_weights, monkeypatch):
    model = load_model("trus-unet", unet_weights, "auto")

    def broken(*arguments, **options):
        raise RuntimeError("Given groups=1, weight of size [4, 1, 3, 3, 3], expected input to have 1 channels")
    monkeypatch.setattr(inference, "sliding_window_inference", broken)
    with pytest.raises(RuntimeError, match="expected input"):
        tumour_probability(pair[0], model=model)


# ------------------------------------------------------------------------------------------ learned registration
def test_learned_registration_moves_to_cpu_on_out_of_memory(pair, monkeypatch, caplog):
    torch.manual_seed(0)
    network = build_globalnet(spatial_size=(16, 16, 16)).eval()
    with torch.no_grad():
        for parameter in network.parameters():  # away from the identity it starts as
            parameter.add_(0.05 * torch.randn_like(parameter))

    def loaded(device: torch.device, fallback: bool) -> LoadedRegistration:
        return LoadedRegistration(registration_spec("globalnet"), network, device, 6.0, (16, 16, 16),
                                  Path("random"), cpu_fallback=fallback)
    expected = register_batch(loaded(torch.device("cpu"), False), [(*pair, None)])[0]
    monkeypatch.setattr(type(network), "forward", raise_oom_off_cpu(type(network).forward))
    with pytest.raises(InputError, match=r"^registration \(globalnet\): CUDA out of memory"):
        register_batch(loaded(ACCELERATOR, False), [(*pair, None)])
    model = loaded(ACCELERATOR, True)
    with caplog.at_level(logging.WARNING, logger="MRITRUSFusionLib"):
        transform = register_batch(model, [(*pair, None)])[0]
    assert parameters(transform) == parameters(expected) and parameters(expected) != parameters(sitk.AffineTransform(3))
    assert len(fallback_warnings(caplog)) == 1 and model.device == torch.device("cpu")
