"""The checkpoint file of a segmentation model: one ``torch.save``'d dict, readable with ``weights_only``.

Keys (**all required**):

* ``model`` -- registry name of the architecture (e.g. ``trus-unet``),
* ``arguments`` -- keyword arguments of the network builder (plain lists/numbers/strings),
* ``state_dict`` -- the network weights (CPU tensors),
* ``library_version`` -- ``MRITRUSFusionLib.__version__`` of the code that wrote it,
* ``spacing_mm`` -- isotropic voxel spacing (mm) of the images the model was trained on,
* ``patch_size`` -- patch side lengths (voxels, ITK i/j/k order) used for training and sliding windows,
* ``normalisation`` -- intensity normalisation name (see :mod:`.preprocessing`).

Optional keys: ``config`` (the training configuration), ``metrics`` (validation results), ``iterations``, and
for a deep ensemble (:func:`ensemble_checkpoint`) ``ensemble_state_dicts``, the weights of the further members
(same architecture and ``arguments``; the network then averages the class probabilities of all members), with
``ensemble_members``, each member's seed, metrics and iterations.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from .. import __version__
from ..errors import InputError
from ..io import atomic_output

#: Optional key of a deep ensemble: the state dicts of the members after the first (``state_dict``).
ENSEMBLE_KEY = "ensemble_state_dicts"
#: Entries of a member checkpoint that must agree across an ensemble's members.
ENSEMBLE_SHARED = ("model", "arguments", "spacing_mm", "patch_size", "normalisation")
REQUIRED_KEYS = ("model", "arguments", "state_dict", "library_version", "spacing_mm", "patch_size",
                 "normalisation")


def _plain(value: Any) -> Any:
    """``value`` with tuples turned into lists (recursively), so ``torch.load(weights_only=True)`` reads it."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def make_checkpoint(model: str, arguments: Mapping[str, Any], network: torch.nn.Module, spacing_mm: float,
                    patch_size: Sequence[int], normalisation: str, **extra: Any) -> dict:
    """The checkpoint dict of ``network`` (weights copied to CPU).

    Args:
        model: registry name of the architecture.
        arguments: builder keyword arguments that recreate ``network``.
        network: the trained network.
        spacing_mm: isotropic training voxel spacing in mm.
        patch_size: training patch size in voxels (i, j, k).
        normalisation: name of the intensity normalisation the network expects.
        extra: optional entries (``config``, ``metrics``, ``iterations``...), plain Python values.
    """
    state = {key: value.detach().cpu().clone() for key, value in network.state_dict().items()}
    return {"model": model, "arguments": _plain(dict(arguments)), "state_dict": state,
            "library_version": __version__, "spacing_mm": float(spacing_mm),
            "patch_size": [int(p) for p in patch_size], "normalisation": normalisation,
            **{key: _plain(value) for key, value in extra.items()}}


def save_checkpoint(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (no partial file on failure); returns the path."""
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise ValueError(f"checkpoint lacks {', '.join(missing)}")
    with atomic_output(path) as tmp:
        torch.save(dict(checkpoint), tmp)
    return Path(path)


def read_checkpoint(path: str | os.PathLike, expected: Optional[str] = None) -> dict:
    """The checkpoint dict stored at ``path``.

    Args:
        path: the ``.pt`` file.
        expected: text naming the expected architecture, appended to error messages.

    Raises:
        InputError: the file is missing, not a torch checkpoint, or lacks a required key.
    """
    path = Path(path)
    wanted = f"; expected {expected}" if expected else ""
    if not path.is_file():
        raise InputError(f"weights {path}: file not found{wanted}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a corrupt or foreign file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"weights {path}: not a readable PyTorch checkpoint ({reason}){wanted}") from error
    if not isinstance(checkpoint, dict):
        raise InputError(f"weights {path}: not a checkpoint dict (a {type(checkpoint).__name__}){wanted}")
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise InputError(f"weights {path}: checkpoint lacks {', '.join(missing)}{wanted}")
    return checkpoint


def ensemble_checkpoint(members: Sequence[Mapping[str, Any]]) -> dict:
    """One checkpoint of the deep ensemble of ``members`` (two or more checkpoints of one model, trained with
    different seeds): the first member's checkpoint plus the others' weights under :data:`ENSEMBLE_KEY` and
    each member's ``seed``, ``metrics`` and ``iterations`` under ``ensemble_members``.

    Raises:
        InputError: fewer than two members, a member that is itself an ensemble, or members that differ in
            an entry of :data:`ENSEMBLE_SHARED`.
    """
    if len(members) < 2:
        raise InputError(f"an ensemble needs at least 2 member checkpoints, got {len(members)}")
    first = members[0]
    for index, member in enumerate(members):
        if ENSEMBLE_KEY in member:
            raise InputError(f"ensemble member {index}: already an ensemble")
        differing = [key for key in ENSEMBLE_SHARED if member[key] != first[key]]
        if differing:
            raise InputError(f"ensemble member {index}: {', '.join(differing)} differ from member 0's")
    summary = [{"seed": (member.get("config") or {}).get("seed"), "metrics": member.get("metrics"),
                "iterations": member.get("iterations")} for member in members]
    return {**first, ENSEMBLE_KEY: [dict(member["state_dict"]) for member in members[1:]],
            "ensemble_members": _plain(summary)}
