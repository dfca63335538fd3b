"""Registry of segmentation models: name -> architecture, training geometry and weight file; loading.

Weights are looked up, in order, in the file the user gives, in the directory named by the environment
variable ``MRITRUS_FUSION_MODELS``, and in ``Resources/Models`` of the repository (bundled weights).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..devices import fallback_allowed
from ..errors import InputError
from .checkpoints import ENSEMBLE_KEY, read_checkpoint
from .networks import build_trus_unet
from .networks.csad import CSADNet
from .networks.ensemble import MeanProbabilityEnsemble
from .networks.reg_enhanced import RegEnhancedUNet
from .networks.stacked import StackedInputs

#: Environment variable naming a directory of model weight files.
ENV_MODELS = "MRITRUS_FUSION_MODELS"
#: Bundled weights of the repository.
BUNDLED_MODELS_DIR = Path(__file__).resolve().parents[2] / "Resources" / "Models"
#: Where a regular (non-editable) ``pip install`` puts the same files (``data-files`` in pyproject.toml).
INSTALLED_MODELS_DIR = Path(sys.prefix) / "share" / "mritrus-fusion" / "models"


@dataclass(frozen=True)
class ModelSpec:
    """What a model name means.

    Attributes:
        name: registry name (the ``--model`` value).
        description: architecture in words, used in error messages.
        builder: function returning the network from keyword ``arguments``.
        arguments: default builder keyword arguments.
        spacing_mm: isotropic voxel spacing (mm) the model is trained and run at.
        patch_size: patch side lengths in voxels (i, j, k) for training and sliding-window inference.
        normalisation: intensity normalisation name (see :func:`.preprocessing.normalise`).
        weights_file: file name of the default weights.
        tumour_channel: output channel holding the target class (the tumour, or the gland of gland models).
        inputs: input roles in network channel order: ``trus``, ``mri`` or ``adc`` (the ``segment`` options).
            The first is the reference: outputs lie on its grid; MRI-space roles (``mri``, ``adc``) are
            resampled onto a TRUS reference through the registration transform, other roles through
            physical space (identity).
        target: what the target channel segments, ``tumour`` or ``gland`` (segment names, lesion lists).
        optional_inputs: trailing roles of ``inputs`` the user may leave out (the network then gets fewer
            channels, e.g. CSAD without ADC).
        adapter: wraps the loaded network for inference when it does not map one channel-stacked tensor to
            logits (networks taking one tensor per input and returning a dict: :class:`StackedInputs`).
    """

    name: str
    description: str
    builder: Callable[..., torch.nn.Module]
    arguments: dict[str, Any] = field(default_factory=dict)
    spacing_mm: float = 0.8
    patch_size: tuple[int, int, int] = (64, 64, 64)
    normalisation: str = "zscore-foreground"
    weights_file: str = ""
    tumour_channel: int = 1
    inputs: tuple[str, ...] = ("trus",)
    target: str = "tumour"
    optional_inputs: tuple[str, ...] = ()
    adapter: Optional[Callable[[torch.nn.Module], torch.nn.Module]] = None

    @property
    def expected(self) -> str:
        """``'name' (description)``, the phrase error messages use for the expected architecture."""
        return f"'{self.name}' ({self.description})"


MODELS: dict[str, ModelSpec] = {
    "trus-unet": ModelSpec(
        name="trus-unet", description="MONAI UNet 3D, 1→2 channels", builder=build_trus_unet,
        arguments={"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1},
        spacing_mm=0.8, patch_size=(64, 64, 64), normalisation="zscore-foreground",
        weights_file="trus-unet.pt"),
    "gland-trus": ModelSpec(
        name="gland-trus", description="MONAI UNet 3D, TRUS → background/gland", builder=build_trus_unet,
        arguments={"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1},
        spacing_mm=1.5, patch_size=(40, 56, 40), normalisation="zscore-foreground",
        weights_file="gland-trus.pt", inputs=("trus",), target="gland"),
    "gland-mri": ModelSpec(
        name="gland-mri", description="MONAI UNet 3D, MRI → background/gland", builder=build_trus_unet,
        arguments={"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1},
        spacing_mm=1.5, patch_size=(48, 48, 48), normalisation="zscore",
        weights_file="gland-mri.pt", inputs=("mri",), target="gland"),
    "concat": ModelSpec(
        name="concat", description="MONAI UNet 3D, TRUS + MRI resampled onto it (2 channels) → background/tumour",
        builder=build_trus_unet,
        arguments={"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1, "in_channels": 2},
        spacing_mm=1.6, patch_size=(48, 48, 48), normalisation="zscore-foreground", weights_file="concat.pt",
        inputs=("trus", "mri")),
    "reg-enhanced": ModelSpec(
        name="reg-enhanced", description="seed 000 RegEnhancedUNet: ViT affine branch + MONAI UNet 3D, TRUS + MRI "
                                         "→ background/tumour", builder=RegEnhancedUNet,
        arguments={"spatial_size": [48, 48, 48], "channels": [8, 16, 32, 64], "strides": [2, 2, 2],
                   "num_res_units": 1, "registration_args": {"hidden_size": 48, "num_layers": 2, "num_heads": 4,
                                                             "mlp_dim": 96}},
        spacing_mm=1.6, patch_size=(48, 48, 48), normalisation="zscore-foreground",
        weights_file="reg-enhanced.pt", inputs=("trus", "mri"), adapter=StackedInputs),
    "csad": ModelSpec(
        name="csad", description="seed 004 CSADNet 3D, two streams T2W [+ ADC] → background/tumour",
        builder=CSADNet, arguments={"spatial_dims": 3, "channels": [8, 16, 32, 64], "adc_dropout": 0.3},
        spacing_mm=1.6, patch_size=(32, 32, 32), normalisation="zscore", weights_file="csad.pt",
        inputs=("mri", "adc"), optional_inputs=("adc",), adapter=StackedInputs),
}


@dataclass
class LoadedModel:
    """A network ready for inference (eval mode, on ``device``) with the geometry it expects.

    Attributes:
        spec: the registry entry.
        network: the network with its weights.
        device: where the network lives.
        spacing_mm: isotropic spacing (mm) read from the checkpoint.
        patch_size: sliding-window size in voxels (i, j, k) read from the checkpoint.
        normalisation: intensity normalisation read from the checkpoint.
        path: the weight file.
        metadata: the checkpoint without its ``state_dict``.
        cpu_fallback: when CUDA runs out of memory, move to the CPU and go on there (with a warning) instead
            of failing; :func:`load_model` allows it for ``device="auto"`` (see :mod:`MRITRUSFusionLib.devices`).
    """

    spec: ModelSpec
    network: torch.nn.Module
    device: torch.device
    spacing_mm: float
    patch_size: tuple[int, int, int]
    normalisation: str
    path: Path
    metadata: dict = field(default_factory=dict)
    cpu_fallback: bool = False


def model_spec(name: str) -> ModelSpec:
    """The registry entry of ``name``; :class:`InputError` listing the known names otherwise."""
    if name not in MODELS:
        raise InputError(f"model '{name}': unknown model; available: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def locate_weights(weights_file: str) -> Path:
    """Where a bundled weights file ``weights_file`` is found when the user gives no path.

    In ``$MRITRUS_FUSION_MODELS`` if it exists there, else in the bundled ``Resources/Models`` of a source
    checkout, else in ``<prefix>/share/mritrus-fusion/models`` of a regular install. The returned path may not
    exist (loading then explains).
    """
    models_dir = os.environ.get(ENV_MODELS)
    if models_dir:
        candidate = Path(models_dir).expanduser() / weights_file
        if candidate.is_file():
            return candidate
    installed = INSTALLED_MODELS_DIR / weights_file
    bundled = BUNDLED_MODELS_DIR / weights_file
    return installed if installed.is_file() and not bundled.is_file() else bundled


def default_weights_path(name: str) -> Path:
    """Where the weights of model ``name`` are found when the user gives none (:func:`locate_weights`)."""
    return locate_weights(model_spec(name).weights_file)


def read_model_checkpoint(spec: Any, weights: Optional[str | os.PathLike], default: Path) -> tuple[Path, dict]:
    """(path, checkpoint) of ``weights`` (``default`` when None), checked to be a checkpoint of ``spec.name``.

    Raises:
        InputError: missing, unreadable or foreign file, or a checkpoint of another model.
    """
    path = Path(weights).expanduser() if weights is not None else default
    checkpoint = read_checkpoint(path, expected=spec.expected)
    if checkpoint["model"] != spec.name:
        raise InputError(f"weights {path}: checkpoint is for '{checkpoint['model']}', expected {spec.expected}")
    return path, checkpoint


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        InputError: unknown device name, or CUDA requested but not available.
    """
    text = str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError(f"device '{device}': CUDA is not available on this machine; "
                             "use --device cpu or --device auto")
        return torch.device(text)
    raise InputError(f"device '{device}': unknown device; expected auto, cpu or cuda")


def checkpoint_geometry(checkpoint: dict, path: Path, spec: ModelSpec) -> tuple[float, tuple[int, int, int]]:
    """(spacing_mm, patch_size) of ``checkpoint``, validated."""
    try:
        spacing = float(checkpoint["spacing_mm"])
        patch = tuple(int(p) for p in checkpoint["patch_size"])
    except (TypeError, ValueError) as error:
        raise InputError(f"weights {path}: malformed spacing_mm/patch_size ({error}); "
                         f"expected {spec.expected}") from error
    if not spacing > 0 or len(patch) != 3 or min(patch) < 1:
        raise InputError(f"weights {path}: invalid spacing_mm {spacing} or patch_size {patch}; "
                         f"expected {spec.expected}")
    return spacing, patch  # type: ignore[return-value]


def network_from_checkpoint(checkpoint: dict, path: Path, spec: ModelSpec) -> torch.nn.Module:
    """The network of ``spec`` built from the checkpoint's arguments, with its weights loaded."""
    arguments = checkpoint["arguments"]
    if not isinstance(arguments, dict):
        raise InputError(f"weights {path}: 'arguments' is not a dict; expected {spec.expected}")
    try:
        network = spec.builder(**arguments)
    except (TypeError, ValueError, AssertionError) as error:
        raise InputError(f"weights {path}: arguments {arguments} do not build {spec.expected}: {error}") from error
    try:
        network.load_state_dict(checkpoint["state_dict"], strict=True)
    except (RuntimeError, TypeError, AttributeError) as error:
        first = str(error).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2])
        raise InputError(f"weights {path}: state dict does not match {spec.expected}: {detail}") from error
    return network


def ensemble_network(checkpoint: dict, path: Path, spec: ModelSpec) -> torch.nn.Module:
    """The network of ``checkpoint``; for a deep ensemble (:data:`.checkpoints.ENSEMBLE_KEY`) the
    :class:`.networks.ensemble.MeanProbabilityEnsemble` of all its members."""
    further = checkpoint.get(ENSEMBLE_KEY) or []
    if not isinstance(further, list):
        raise InputError(f"weights {path}: '{ENSEMBLE_KEY}' is not a list of state dicts; expected {spec.expected}")
    members = [network_from_checkpoint({**checkpoint, "state_dict": state}, path, spec)
               for state in [checkpoint["state_dict"], *further]]
    return members[0] if len(members) == 1 else MeanProbabilityEnsemble(members)


def load_model(name: str = "trus-unet", weights: Optional[str | os.PathLike] = None,
               device: str | torch.device = "auto") -> LoadedModel:
    """Load model ``name`` from ``weights`` (default: :func:`default_weights_path`) onto ``device``.

    Raises:
        InputError: unknown name or device, missing or unreadable file, a checkpoint for another
            architecture, or weights that do not fit the architecture; the message names the expected one.
    """
    spec = model_spec(name)
    target = resolve_device(device)
    path, checkpoint = read_model_checkpoint(spec, weights, default_weights_path(name))
    spacing, patch = checkpoint_geometry(checkpoint, path, spec)
    network = ensemble_network(checkpoint, path, spec)
    network = (spec.adapter(network) if spec.adapter else network).to(target).eval()
    metadata = {key: value for key, value in checkpoint.items() if key not in ("state_dict", ENSEMBLE_KEY)}
    return LoadedModel(spec=spec, network=network, device=target, spacing_mm=spacing, patch_size=patch,
                       normalisation=str(checkpoint["normalisation"]), path=path, metadata=metadata,
                       cpu_fallback=fallback_allowed(device))
