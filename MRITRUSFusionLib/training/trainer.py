"""Train a segmentation model from a :class:`~.config.TrainingConfig` and save its checkpoint.

Runs are deterministic on CPU for a given ``seed`` (torch, NumPy sampling and deterministic algorithms),
report progress through :func:`MRITRUSFusionLib.progress.stage` (tqdm bar with the running loss) and write
the checkpoint atomically (see :mod:`MRITRUSFusionLib.segmentation.checkpoints`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import SimpleITK as sitk
import torch
from monai.losses import DiceCELoss
from torch.utils.data import DataLoader

from ..errors import InputError
from ..phantom import generate_phantom
from ..progress import stage
from ..segmentation.checkpoints import make_checkpoint, save_checkpoint
from ..segmentation.inference import probability_to_label, tumour_probability
from ..segmentation.models import LoadedModel, ModelSpec, model_spec, resolve_device
from .config import TrainingConfig, as_config
from .phantom_data import PhantomPatches

log = logging.getLogger(__name__)


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed torch and require deterministic algorithms inside the block (restored afterwards)."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def build_network(config: TrainingConfig, spec: ModelSpec) -> tuple[torch.nn.Module, dict]:
    """The untrained network of ``config.model`` and the builder arguments used (registry defaults updated
    by the configuration's ``arguments``)."""
    arguments = {**spec.arguments, **config.model.arguments}
    try:
        return spec.builder(**arguments), arguments
    except (TypeError, ValueError, AssertionError) as error:
        raise InputError(f"config key 'model.arguments': {arguments} do not build {spec.expected}: {error}") from None


def _lr_lambda(config: TrainingConfig):
    """Learning-rate factor per iteration: constant, or polynomial decay (power 0.9) to zero."""
    if config.optimiser.schedule == "constant":
        return lambda iteration: 1.0
    return lambda iteration: (1.0 - iteration / config.iterations) ** 0.9


def validation_dice(loaded: LoadedModel, seeds: list[int]) -> dict[str, float]:
    """Dice of the thresholded prediction against the tumour truth of default phantoms ``seeds``."""
    scores = {}
    for seed in seeds:
        case = generate_phantom(seed=seed)
        label = probability_to_label(tumour_probability(case.trus, model=loaded))
        pred = sitk.GetArrayViewFromImage(label) > 0
        truth = sitk.GetArrayViewFromImage(case.trus_tumours) > 0
        total = pred.sum() + truth.sum()
        scores[str(seed)] = 1.0 if total == 0 else float(2 * (pred & truth).sum() / total)
    return scores


def _fit(network: torch.nn.Module, config: TrainingConfig, spec: ModelSpec, device: torch.device) -> float:
    """Optimise ``network`` in place for ``config.iterations`` steps; returns the final running loss."""
    patches = PhantomPatches(config.data, config.patch_size, config.spacing_mm, spec.normalisation, config.seed)
    with stage("prepare", 1) as s:
        s.advance(1, f"{len(patches.cases)} phantom cases")
    batches = iter(DataLoader(patches, batch_size=config.batch_size, num_workers=0))
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=config.loss.lambda_dice,
                               lambda_ce=config.loss.lambda_ce)
    optimiser = torch.optim.Adam(network.parameters(), lr=config.optimiser.lr,
                                 weight_decay=config.optimiser.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, _lr_lambda(config))
    network.train()
    running, started = None, time.monotonic()
    with stage("train", config.iterations) as s:
        for iteration in range(1, config.iterations + 1):
            image, label = next(batches)
            optimiser.zero_grad(set_to_none=True)
            loss = loss_function(network(image.to(device)), label.to(device))
            loss.backward()
            optimiser.step()
            scheduler.step()
            running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
            s.advance(1, f"loss {running:.4f}")
            if config.log_every and iteration % config.log_every == 0:
                log.info("iteration %d/%d loss %.4f (%.0f s)", iteration, config.iterations, running,
                         time.monotonic() - started)
    return float(running)


def train(config: TrainingConfig | dict | str | os.PathLike, out: Optional[str | os.PathLike] = None) -> Path:
    """Train the model described by ``config`` (object, mapping or YAML path) and save its checkpoint.

    Args:
        config: the training configuration.
        out: checkpoint path; default ``config.output`` (relative to the working directory).

    Returns:
        The written checkpoint path (readable by :func:`MRITRUSFusionLib.segmentation.load_model`).

    Raises:
        InputError: invalid configuration or device.
    """
    config = as_config(config)
    spec = model_spec(config.model.name)
    device = resolve_device(config.device)
    target = Path(out) if out is not None else config.output
    with deterministic(config.seed):
        network, arguments = build_network(config, spec)
        network = network.to(device)
        final_loss = _fit(network, config, spec, device)
    network.eval()
    loaded = LoadedModel(spec=spec, network=network, device=device, spacing_mm=config.spacing_mm,
                         patch_size=config.patch_size, normalisation=spec.normalisation, path=target)
    metrics = {"validation_dice": validation_dice(loaded, config.validation.seeds)} if config.validation.seeds else {}
    if metrics:
        log.info("validation Dice %s", metrics["validation_dice"])
    checkpoint = make_checkpoint(spec.name, arguments, network, config.spacing_mm, config.patch_size,
                                 spec.normalisation, config=config.model_dump(mode="json"),
                                 iterations=config.iterations, final_loss=final_loss, metrics=metrics)
    return save_checkpoint(checkpoint, target)
