"""Registry of learned registration models: name -> network builder, grid, kind and weight file; loading.

A registration checkpoint has the keys of a segmentation one (:mod:`MRITRUSFusionLib.segmentation.checkpoints`):
``patch_size`` is the registration grid size in voxels (i, j, k), ``spacing_mm`` its spacing, and the builder
``arguments`` hold ``spatial_size`` (D, H, W), so the file alone rebuilds the network. Weights are looked up
like the segmentation models' (user path, ``$MRITRUS_FUSION_MODELS``, bundled ``Resources/Models``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import torch

from ...devices import fallback_allowed
from ...errors import InputError
from ...memory_format import channels_last
from ...segmentation.models import (checkpoint_geometry, locate_weights, network_from_checkpoint,
                                    read_model_checkpoint, resolve_device)
from .baselines import build_globalnet, build_localnet


@dataclass(frozen=True)
class RegistrationSpec:
    """What a learned registration method name means.

    Attributes:
        name: registry name (the ``--method`` value).
        description: architecture in words, used in error messages.
        builder: function returning the network from ``spatial_size`` (D, H, W) and keyword ``arguments``;
            the network maps ``(fixed, moving)`` (B, 1, D, H, W) to a dict holding ``ddf`` (voxels, pull).
        arguments: default builder keyword arguments (without ``spatial_size``).
        kind: ``affine`` (a global linear map) or ``deformable``.
        spacing_mm: isotropic spacing (mm) of the registration grid.
        grid_size: registration grid in voxels (i, j, k).
        weights_file: file name of the default weights.
    """

    name: str
    description: str
    builder: Callable[..., torch.nn.Module]
    arguments: dict[str, Any] = field(default_factory=dict)
    kind: Literal["affine", "deformable"] = "deformable"
    spacing_mm: float = 1.5
    grid_size: tuple[int, int, int] = (64, 64, 64)
    weights_file: str = ""

    @property
    def expected(self) -> str:
        """``'name' (description)``, the phrase error messages use for the expected architecture."""
        return f"'{self.name}' ({self.description})"


def _vit_affine(**arguments: Any) -> torch.nn.Module:
    from .vit_affine import ViTAffine
    return ViTAffine(**arguments)


def _ecmca_lstm(**arguments: Any) -> torch.nn.Module:
    from .ecmca_lstm import ECMCALSTM
    return ECMCALSTM(**arguments)


REGISTRATION_MODELS: dict[str, RegistrationSpec] = {
    spec.name: spec for spec in (
        RegistrationSpec("localnet", "MONAI LocalNet, deformable DDF baseline", build_localnet,
                         {"num_channel_initial": 16, "extract_levels": [0, 1, 2, 3]}, "deformable",
                         weights_file="localnet.pt"),
        RegistrationSpec("globalnet", "MONAI GlobalNet, affine baseline", build_globalnet,
                         {"num_channel_initial": 8, "depth": 4}, "affine", weights_file="globalnet.pt"),
        RegistrationSpec("vit-affine", "seed 000 ViT affine registration branch", _vit_affine, {}, "affine",
                         weights_file="vit-affine.pt"),
        RegistrationSpec("ecmca-lstm", "seed 001 E-CMCA + LSTM deformable network", _ecmca_lstm, {},
                         "deformable", weights_file="ecmca-lstm.pt"),
    )
}


@dataclass
class LoadedRegistration:
    """A registration network ready for inference (eval mode, on ``device``) with its grid geometry.

    ``cpu_fallback``: when CUDA runs out of memory, move to the CPU (with a warning) instead of failing;
    :func:`load_registration_model` allows it for ``device="auto"`` (see :mod:`MRITRUSFusionLib.devices`).
    """

    spec: RegistrationSpec
    network: torch.nn.Module
    device: torch.device
    spacing_mm: float
    grid_size: tuple[int, int, int]
    path: Path
    cpu_fallback: bool = False


def registration_spec(name: str) -> RegistrationSpec:
    """The registry entry of ``name``; :class:`InputError` listing the known names otherwise."""
    if name not in REGISTRATION_MODELS:
        raise InputError(f"method '{name}': unknown learned registration model; available: "
                         f"{', '.join(sorted(REGISTRATION_MODELS))}")
    return REGISTRATION_MODELS[name]


def default_registration_weights(name: str) -> Path:
    """Where the weights of ``name`` are found when the user gives none (may not exist)."""
    return locate_weights(registration_spec(name).weights_file)


def load_registration_model(name: str, weights: Optional[str | os.PathLike] = None,
                            device: str | torch.device = "auto") -> LoadedRegistration:
    """Load learned registration model ``name`` from ``weights`` (default: the bundled file) onto ``device``.

    Raises:
        InputError: unknown name or device, missing, unreadable or foreign checkpoint, or weights that do not
            fit the architecture; the message names the expected one.
    """
    spec = registration_spec(name)
    target = resolve_device(device)
    path, checkpoint = read_model_checkpoint(spec, weights, default_registration_weights(name))
    spacing, grid_size = checkpoint_geometry(checkpoint, path, spec)
    network = channels_last(network_from_checkpoint(checkpoint, path, spec).to(target)).eval()
    return LoadedRegistration(spec, network, target, spacing, grid_size, path, fallback_allowed(device))


def available_methods() -> list[str]:
    """Learned methods whose weights are present (bundled, installed or in ``$MRITRUS_FUSION_MODELS``)."""
    return [name for name in sorted(REGISTRATION_MODELS) if default_registration_weights(name).is_file()]
