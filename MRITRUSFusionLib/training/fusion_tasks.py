"""Trainer tasks of the tumour models that use the MRI: ``concat``, ``reg-enhanced`` (seed 000), ``csad`` (seed 004).

They are segmentation-registry models (:mod:`MRITRUSFusionLib.segmentation.models`) whose inputs are several
roles. On phantoms the data are :mod:`.fusion_data` cases (every role on the reference grid, the MRI misaligned
by ``data.mri_misalignment_*``); from files, the file source of :class:`.tasks.SegmentationTask`, with
``data.image`` naming one role per model input, already on the reference grid (e.g. ``[fixed_image,
mri_in_trus]`` for ``concat``; ``reg-enhanced`` needs phantoms: its registration terms need the labels of both
images). Networks that take one tensor per input and return a dict (``spec.adapter``) are called with the
channels of ``image``; the loss is then either a segmentation loss on ``outputs["logits"]`` (``dice_ce``,
``dice_focal``) or the weighted ``terms`` of :data:`FUSION_TERMS`: the registration terms plus
``dice-focal``/``dice-ce`` on the logits and ``csad`` (:class:`~MRITRUSFusionLib.losses.csad.CSADLoss`) on the
whole outputs. ``reg-enhanced`` follows seed 000's schedule through ``phases`` (registration pre-training with
only ``registration.`` trainable and the ``vit-affine`` term, then segmentation with ``dice-focal`` added).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from monai.losses import DiceCELoss
from torch import nn

from ..errors import InputError
from ..losses.csad import CSADLoss
from ..losses.dice_focal import PooledDiceFocalLoss
from ..losses.registration import REGISTRATION_TERMS, build_registration_loss
from ..memory_format import batch_to
from ..segmentation.models import model_spec
from .data_config import FileDataSection
from .fusion_data import FusionBatches, FusionSampler
from .sources import DataSource
from .tasks import SEGMENTATION_LOSSES, SegmentationTask


class LabelTerm(nn.Module):
    """A segmentation loss as a weighted term: ``loss(outputs["logits"], batch["label"])``, or
    ``loss(outputs, batch["label"])`` with ``whole_outputs`` (losses reading several outputs, e.g. CSAD)."""

    def __init__(self, loss: nn.Module, whole_outputs: bool = False) -> None:
        super().__init__()
        self.loss, self.whole_outputs = loss, whole_outputs

    def forward(self, outputs: Mapping[str, Any], batch: Mapping[str, torch.Tensor]):
        return self.loss(outputs if self.whole_outputs else outputs["logits"], batch["label"])


#: Term name -> factory: the registration terms and the segmentation terms of the tumour models.
FUSION_TERMS: dict[str, Callable[..., nn.Module]] = {
    **REGISTRATION_TERMS,
    "dice-focal": lambda **a: LabelTerm(PooledDiceFocalLoss(**a)),
    "dice-ce": lambda **a: LabelTerm(DiceCELoss(to_onehot_y=True, softmax=True, **a)),
    "csad": lambda **a: LabelTerm(CSADLoss(**a), whole_outputs=True),
}


class FusionTask(SegmentationTask):
    """A segmentation-registry tumour model taking the roles ``spec.inputs`` (module docstring)."""

    #: Whether batches carry the gland and tumour masks of both images (joint registration).
    registration_labels = False

    def __init__(self, config):
        self.config = config
        self.spec = model_spec(config.model.name)
        if config.validation.metric != "dice":
            raise InputError(f"config key 'validation.metric': model '{self.spec.name}' is scored by 'dice' "
                             f"(of the tumour), got '{config.validation.metric}'")
        losses = [("loss", config.loss)] + [(f"phases[{index}].loss", phase.loss)
                                            for index, phase in enumerate(config.phases) if phase.loss is not None]
        for key, loss in losses:  # an InputError naming a bad loss or term before any work
            try:
                self.loss_function(loss)
            except InputError as error:
                raise InputError(str(error).replace("config key 'loss.", f"config key '{key}.")) from None

    def loss_function(self, loss) -> Callable:
        """``(outputs dict, batch) -> {"total", ...}`` of a :class:`.config.LossSection`.

        Raises:
            InputError: a loss other than ``dice_ce``, ``dice_focal`` or ``terms``, or a bad term.
        """
        if loss.name in SEGMENTATION_LOSSES:
            segmentation = SegmentationTask.loss_function(self, loss)
            return lambda outputs, batch: {"total": segmentation(outputs["logits"], batch["label"])}
        if loss.name != "terms":
            raise InputError(f"config key 'loss.name': model '{self.spec.name}' is trained with "
                             f"{' or '.join(SEGMENTATION_LOSSES)} or 'terms', got '{loss.name}'")
        return build_registration_loss([term.model_dump() for term in loss.terms], FUSION_TERMS)

    def outputs(self, model: nn.Module, image: torch.Tensor) -> dict:
        """The network's outputs for channel-stacked ``image``: its dict, or ``{"logits": ...}``."""
        if self.spec.adapter is None:
            return {"logits": model(image)}
        return model(*image.split(1, dim=1))

    def loss(self, model: nn.Module, batch: dict, loss_function: Callable, device: torch.device) -> torch.Tensor:
        """Training loss of ``batch`` (a scalar tensor)."""
        batch = batch_to(batch, device)
        return loss_function(self.outputs(model, batch["image"]), batch)["total"]

    def build_source(self, config, rank: int, world_size: int) -> DataSource:
        """Phantom cases of every input role (:mod:`.fusion_data`), or the file source of ``data.image``.

        Raises:
            InputError: a batch that does not split over the processes, ``data.image`` not one role per model
                input, or files for a model whose loss needs the labels of both images.
        """
        if config.batch_size % world_size:
            raise InputError(f"config key 'batch_size': {config.batch_size} does not split evenly over "
                             f"{world_size} processes")
        if isinstance(config.data, FileDataSection):
            return self._file_source(config, rank, world_size)
        sampler = FusionSampler(config, self.spec.inputs, self.normalisation, self.registration_labels)
        seeds = range(config.data.seed_start, config.data.seed_start + config.data.count)
        batches = FusionBatches(sampler, [sampler.case(seed) for seed in seeds], config.batch_size, config.seed,
                                rank, world_size)
        validation = [sampler.validation_case(seed) for seed in config.validation.seeds]
        return DataSource(batches, validation, f"{len(batches.cases)} phantom cases ({' + '.join(self.spec.inputs)}; "
                                               f"seeds {seeds.start}..{seeds.stop - 1})")

    def _file_source(self, config, rank: int, world_size: int) -> DataSource:
        if self.registration_labels:
            raise InputError(f"config key 'data.source': model '{self.spec.name}' trains on phantoms (its "
                             f"registration terms need gland and tumour labels of both images)")
        if len(config.data.image) != len(self.spec.inputs):
            raise InputError(f"config key 'data.image': model '{self.spec.name}' takes "
                             f"{len(self.spec.inputs)} images ({', '.join(self.spec.inputs)}, on the grid of the "
                             f"first), got {config.data.image}")
        return super().build_source(config, rank, world_size)

    def score(self, network: nn.Module, cases: list, metric: str, loss_function: Callable,
              device: torch.device) -> dict:
        """Tumour Dice of the validation volumes, by sliding windows of the network seen as at inference."""
        viewed = self.spec.adapter(network) if self.spec.adapter else network
        return super().score(viewed, cases, metric, loss_function, device)


class RegEnhancedTask(FusionTask):
    """Seed 000's registration-enhanced U-Net: its ViT branch works on the whole training patch, so the
    network's ``spatial_size`` is the patch size, and batches carry the labels of both images."""

    registration_labels = True

    def build(self) -> tuple[nn.Module, dict]:
        """The untrained network and its builder arguments (``spatial_size`` = the patch, D/H/W)."""
        arguments = {**self.spec.arguments, **self.config.model.arguments,
                     "spatial_size": [int(p) for p in reversed(self.config.patch_size)]}
        try:
            return self.spec.builder(**arguments), arguments
        except (TypeError, ValueError, AssertionError) as error:
            raise InputError(f"config key 'model.arguments' / 'patch_size': {arguments} do not build "
                             f"{self.spec.expected}: {error}") from None


def fusion_task(config) -> FusionTask:
    """The task of ``config.model.name`` (``concat``, ``reg-enhanced`` or ``csad``)."""
    return RegEnhancedTask(config) if config.model.name == "reg-enhanced" else FusionTask(config)
