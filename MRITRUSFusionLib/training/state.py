"""Training checkpoints (``last.pt``, ``best.pt``): an inference checkpoint plus everything a run needs to go on.

On top of the keys of :mod:`MRITRUSFusionLib.segmentation.checkpoints` (architecture, arguments, weights,
spacing, patch size, normalisation, library version) a training checkpoint holds ``config`` (the run's
config), ``step``, ``history`` (validation results and logged losses), ``best`` and ``training_state``:
optimiser, scheduler, AMP scaler, the RNG states of torch/NumPy/Python and the data stream position. It
is read with ``torch.load(weights_only=True)``; :func:`inference_checkpoint` drops ``training_state``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import InputError
from ..segmentation.checkpoints import read_checkpoint, save_checkpoint
from .rng import capture_rng, restore_rng

TRAINING_STATE = "training_state"
#: Config keys that may differ between a run and its resumption (they change no result).
RESUMABLE_CHANGES = frozenset({"device", "output", "run_dir", "log_every", "checkpoint_every", "validate_every",
                               "data.num_workers", "data.cache_rate"})


@dataclass
class RunProgress:
    """Where a run stands: steps done, validation and loss history, the best validation so far."""

    step: int = 0
    #: ``{"step", "metric", "value", "cases"}`` per validation.
    validations: list = field(default_factory=list)
    #: ``{"step", "loss", "lr"}`` per logged step.
    losses: list = field(default_factory=list)
    #: ``{"step", "metric", "value"}`` of the best validation, or None.
    best: Optional[dict] = None
    running_loss: Optional[float] = None

    def as_dict(self) -> dict:
        return {"validations": self.validations, "losses": self.losses}


def training_checkpoint(model_checkpoint: dict, progress: RunProgress, optimiser: torch.optim.Optimizer,
                        scheduler: Any, scaler: Optional[Any], batches: Any) -> dict:
    """``model_checkpoint`` (from the task) with the run's progress and ``training_state`` added."""
    checkpoint = dict(model_checkpoint)
    checkpoint.update(step=progress.step, history=progress.as_dict(), best=progress.best,
                      running_loss=progress.running_loss)
    checkpoint[TRAINING_STATE] = {
        "optimiser": optimiser.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": capture_rng(),
        "data": batches.state_dict(),
    }
    return checkpoint


def load_for_inference(path: str | os.PathLike, device: str = "auto"):
    """The model of any checkpoint (inference, ``last.pt`` or ``best.pt``), ready for inference.

    Needs only the file: the architecture name, builder arguments, grid or patch geometry and normalisation
    are read from it. Returns a segmentation ``LoadedModel``, a registration ``LoadedRegistration``, or for
    Attention-Reg its ``(stage networks, checkpoint)``.

    Raises:
        InputError: missing, corrupt or foreign file, a model name this version does not know, or weights that
            do not build the named architecture.
    """
    from ..registration.learned.attention_reg_infer import MODEL_NAME as ATTENTION_REG
    from ..registration.learned.attention_reg_infer import load_attention_reg
    from ..registration.learned.models import REGISTRATION_MODELS, load_registration_model
    from ..segmentation.models import load_model, model_spec, resolve_device

    name = str(read_checkpoint(path, expected="a MRITRUSFusionLib checkpoint")["model"])
    if name == ATTENTION_REG:
        return load_attention_reg(path, resolve_device(device))
    if name in REGISTRATION_MODELS:
        return load_registration_model(name, path, device)
    model_spec(name)  # InputError for a name this version does not know
    return load_model(name, path, device=device)


def inference_checkpoint(checkpoint: dict) -> dict:
    """``checkpoint`` without its ``training_state`` (what ships and what inference reads)."""
    return {key: value for key, value in checkpoint.items() if key != TRAINING_STATE}


def save(checkpoint: dict, path: str | os.PathLike) -> Path:
    """Write ``checkpoint`` atomically (see :func:`MRITRUSFusionLib.segmentation.checkpoints.save_checkpoint`)."""
    return save_checkpoint(checkpoint, path)


def config_difference(saved: Any, current: Any, prefix: str = "") -> Optional[str]:
    """The first dotted key whose value differs between two config dicts, ignoring :data:`RESUMABLE_CHANGES`."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current)):
            name = f"{prefix}.{key}" if prefix else str(key)
            if name in RESUMABLE_CHANGES:
                continue
            found = config_difference(saved.get(key), current.get(key), name)
            if found:
                return found
        return None
    return None if saved == current else (prefix or "(config)")


def read_training_checkpoint(path: str | os.PathLike, model: str, config: dict) -> dict:
    """The training checkpoint at ``path``, checked against the run that resumes it.

    Raises:
        InputError: missing, corrupt or foreign file; a checkpoint of another model, without training state,
            or trained with a config that differs in a key other than :data:`RESUMABLE_CHANGES`.
    """
    checkpoint = read_checkpoint(path, expected=f"a training checkpoint of '{model}'")
    if checkpoint["model"] != model:
        raise InputError(f"resume {path}: checkpoint is for '{checkpoint['model']}', the config trains '{model}'")
    if not isinstance(checkpoint.get(TRAINING_STATE), dict) or not isinstance(checkpoint.get("config"), dict):
        raise InputError(f"resume {path}: no training state (an inference checkpoint); resume from last.pt or "
                         f"best.pt of the run folder")
    key = config_difference(checkpoint["config"], config)
    if key:
        raise InputError(f"resume {path}: config key '{key}' differs from the checkpoint's; resume with the "
                         f"config the run started with")
    return checkpoint


def restore(checkpoint: dict, network: torch.nn.Module, optimiser: torch.optim.Optimizer, scheduler: Any,
            scaler: Optional[Any], batches: Any) -> RunProgress:
    """Load weights, optimiser, scheduler, scaler, data position and RNG states; the progress to go on from."""
    state = checkpoint[TRAINING_STATE]
    try:
        network.load_state_dict(checkpoint["state_dict"], strict=True)
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        batches.load_state_dict(state["data"])
        restore_rng(state["rng"])
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        detail = " ".join(str(error).split())[:200]
        raise InputError(f"resume: the checkpoint's training state does not fit this run ({detail})") from error
    history = checkpoint.get("history") or {}
    return RunProgress(step=int(checkpoint["step"]), validations=list(history.get("validations", [])),
                       losses=list(history.get("losses", [])), best=checkpoint.get("best"),
                       running_loss=checkpoint.get("running_loss"))
