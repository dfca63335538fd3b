"""What the trainer trains: one task per kind of model, looked up by model name.

A task builds the network from the config, computes the training loss of a batch, scores validation
volumes on the configured metric and writes the inference checkpoint. :class:`SegmentationTask` serves every
model of the segmentation registry; registration models of later work register their own task with
:func:`register_task`, so every model shares :func:`MRITRUSFusionLib.training.train` and its loop.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss

from ..errors import InputError
from ..losses.dice_focal import PooledDiceFocalLoss
from ..memory_format import as_channels_last, batch_to
from ..segmentation.checkpoints import make_checkpoint
from ..segmentation.models import MODELS as SEGMENTATION_MODELS
from ..registration.gland_strain import MODEL_NAME as GLAND_STRAIN
from ..registration.learned.models import REGISTRATION_MODELS
from ..segmentation.models import ModelSpec, model_spec
from .attention_reg_task import AttentionRegTask
from .registration_task import RegistrationTask
from .sources import DataSource, build_source

#: ``loss.name`` values of segmentation models (logits and a label map).
SEGMENTATION_LOSSES = ("dice_ce", "dice_focal")

#: Extra model name -> task factory ``(config) -> task`` (registration models add themselves here).
_TASKS: dict[str, Callable] = {}


def register_task(name: str, factory: Callable) -> None:
    """Make model ``name`` trainable: ``factory(config)`` returns its task."""
    _TASKS[name] = factory


def known_models() -> list[str]:
    """Every model name a config may train."""
    return sorted(set(SEGMENTATION_MODELS) | set(REGISTRATION_MODELS) | set(_TASKS) | {GLAND_STRAIN})


def _dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean arrays (1 when both are empty)."""
    total = int(prediction.sum() + truth.sum())
    return 1.0 if total == 0 else float(2 * np.logical_and(prediction, truth).sum() / total)


class SegmentationTask:
    """A segmentation-registry network: ``image`` (B, C, D, H, W) -> class logits, Dice + CE on ``label``."""

    #: Batch keys the augmentation treats as images and as labels.
    image_keys: Sequence[str] = ("image",)
    label_keys: Sequence[str] = ("label",)

    def __init__(self, config):
        self.config = config
        self.spec: ModelSpec = model_spec(config.model.name)
        if (config.validation.metric in ("tre", "sre") or config.loss.name not in SEGMENTATION_LOSSES
                or config.loss.terms):
            raise InputError(f"config: segmentation model '{self.spec.name}' takes loss 'dice_ce' or 'dice_focal' "
                             f"and validation metric 'dice' or 'loss' (loss 'terms'/'mse' and metrics 'tre'/'sre' "
                             f"are for registration models)")

    @property
    def normalisation(self) -> str:
        """The intensity normalisation the data must have (the file source's choice, else the model's)."""
        return getattr(self.config.data, "normalisation", None) or self.spec.normalisation

    def build(self) -> tuple[torch.nn.Module, dict]:
        """The untrained network and its builder arguments (registry defaults updated by the config)."""
        arguments = {**self.spec.arguments, **self.config.model.arguments}
        try:
            return self.spec.builder(**arguments), arguments
        except (TypeError, ValueError, AssertionError) as error:
            raise InputError(f"config key 'model.arguments': {arguments} do not build "
                             f"{self.spec.expected}: {error}") from None

    def build_source(self, config, rank: int, world_size: int) -> DataSource:
        """Patches of ``config.data`` (phantoms or files) and the validation volumes."""
        return build_source(config, self.normalisation, rank, world_size)

    def loss_function(self, loss) -> Callable:
        """The loss of a :class:`.config.LossSection` (``dice_ce`` or ``dice_focal``) on logits and labels."""
        if loss.name == "dice_focal":
            return PooledDiceFocalLoss(gamma=loss.focal_gamma, alpha=loss.lambda_focal, dice_weight=loss.lambda_dice)
        return DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=loss.lambda_dice, lambda_ce=loss.lambda_ce)

    def loss(self, model: torch.nn.Module, batch: dict, loss_function: Callable, device: torch.device) -> torch.Tensor:
        """Training loss of ``batch`` (a scalar tensor)."""
        batch = batch_to(batch, device)
        return loss_function(model(batch["image"]), batch["label"])

    def score(self, network: torch.nn.Module, cases: list, metric: str, loss_function: Callable,
              device: torch.device) -> dict:
        """``{"mean": float, "cases": {name: value}}`` of ``metric`` (``dice`` of the foreground, or ``loss``)
        over whole validation volumes, predicted with sliding windows of the training patch size."""
        roi = tuple(int(p) for p in reversed(self.config.patch_size))
        values = {}
        was_training = network.training
        network.eval()
        with torch.inference_mode():
            for case in cases:
                image = as_channels_last(torch.from_numpy(np.ascontiguousarray(case.image))[None].to(device))
                logits = sliding_window_inference(image, roi, 1, network, overlap=0.25, mode="gaussian",
                                                  cval=float(case.image.min())).float()
                if metric == "loss":
                    label = torch.from_numpy(case.label.astype(np.int64))[None, None].to(device)
                    values[case.name] = float(loss_function(logits, label))
                else:
                    prediction = logits.argmax(1)[0].cpu().numpy() > 0
                    values[case.name] = _dice(prediction, case.label > 0)
        network.train(was_training)
        return {"mean": float(np.mean(list(values.values()))), "cases": values}

    def checkpoint(self, network: torch.nn.Module, arguments: dict, **extra) -> dict:
        """The inference checkpoint (:mod:`MRITRUSFusionLib.segmentation.checkpoints`) of ``network``."""
        return make_checkpoint(self.spec.name, arguments, network, self.config.spacing_mm, self.config.patch_size,
                               self.normalisation, **extra)


register_task("attention-reg", AttentionRegTask)


def _fusion_task(config):
    """The task of a tumour model using the MRI (:mod:`.fusion_tasks`, imported here: it builds on
    :class:`SegmentationTask`)."""
    from .fusion_tasks import fusion_task
    return fusion_task(config)


for _name in ("concat", "reg-enhanced", "csad"):
    register_task(_name, _fusion_task)

Task = Union[SegmentationTask, RegistrationTask, AttentionRegTask]


def task_for(config) -> Task:
    """The task training ``config.model.name``."""
    name = config.model.name
    if config.model.previous_stages is not None and name != "attention-reg":
        raise InputError(f"config key 'model.previous_stages': model '{name}' has no stages to continue "
                         f"(multi-stage training is for attention-reg)")
    if name in _TASKS:
        return _TASKS[name](config)
    if name in REGISTRATION_MODELS:
        return RegistrationTask(config)
    return SegmentationTask(config)


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is a better model."""
    return metric not in ("loss", "tre", "sre")


def is_better(metric: str, value: float, best: Optional[float]) -> bool:
    """Whether ``value`` beats ``best`` (None: nothing yet)."""
    if best is None:
        return True
    return value > best if higher_is_better(metric) else value < best
