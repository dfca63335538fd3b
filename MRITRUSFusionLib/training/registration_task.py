"""The trainer's task for learned registration models (:mod:`MRITRUSFusionLib.registration.learned.models`).

The network sees a TRUS/MRI pair on its registration grid (``patch_size`` voxels at ``spacing_mm``, centred on
the TRUS, as at inference) and returns a DDF; the loss is the config's weighted ``loss.terms``
(:mod:`MRITRUSFusionLib.losses.registration`). Validation scores whole validation pairs by gland ``dice``
after warping (higher is better), mean landmark ``tre`` in mm (lower is better) or the ``loss``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..losses.registration import build_registration_loss
from ..memory_format import batch_to
from ..registration.learned.models import RegistrationSpec, registration_spec
from ..registration.learned.spatial import warp
from ..segmentation.checkpoints import make_checkpoint
from .registration_data import (IMAGE_KEYS, LABEL_KEYS, RegistrationAugmentation, RegistrationBatches,
                                RegistrationCase, registration_cases)
from .sources import DataSource

#: Normalisation recorded in registration checkpoints (see :mod:`MRITRUSFusionLib.registration.learned.grid`).
NORMALISATION = "zscore-field-of-view"


def gland_dice(warped_moving_label: torch.Tensor, fixed_label: torch.Tensor) -> float:
    """Dice of channel 0 (the gland) of a warped MRI label (B, L, D, H, W, thresholded at 0.5) and the TRUS one."""
    warped, fixed = warped_moving_label[:, 0] > 0.5, fixed_label[:, 0] > 0.5
    total = int(warped.sum() + fixed.sum())
    return 1.0 if total == 0 else float(2 * (warped & fixed).sum() / total)


def _centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0)


def landmark_tre_mm(ddf: torch.Tensor, fixed_label: torch.Tensor, moving_label: torch.Tensor,
                    spacing_mm: float) -> float:
    """Mean TRE (mm) of the landmark channels 1.. present in both labels of one pair (NaN when none).

    A TRUS landmark centroid ``p`` (voxels of the isotropic grid) maps to ``p + u(p)`` (``u`` from the nearest
    voxel of ``ddf``, (1, 3, D, H, W)) and is compared with the MRI landmark centroid.
    """
    errors = []
    for channel in range(1, fixed_label.shape[1]):
        fixed, moving = fixed_label[0, channel].numpy() > 0.5, moving_label[0, channel].numpy() > 0.5
        if not fixed.any() or not moving.any():
            continue
        point = _centroid(fixed)
        voxel = tuple(int(round(v)) for v in point)
        mapped = point + ddf[0, :, voxel[0], voxel[1], voxel[2]].numpy()
        errors.append(float(np.linalg.norm(mapped - _centroid(moving)) * spacing_mm))
    return float(np.mean(errors)) if errors else float("nan")


class RegistrationTask:
    """A registry registration network: ``(fixed, moving)`` -> ``{"ddf", ...}``, loss = weighted terms."""

    image_keys: Sequence[str] = IMAGE_KEYS
    label_keys: Sequence[str] = LABEL_KEYS
    normalisation = NORMALISATION

    def __init__(self, config):
        self.config = config
        self.spec: RegistrationSpec = registration_spec(config.model.name)
        if config.loss.name != "terms":
            raise InputError(f"config key 'loss.name': registration model '{self.spec.name}' is trained with "
                             f"'terms' (a weighted list under loss.terms), got '{config.loss.name}'")
        if config.validation.metric == "sre":
            raise InputError(f"config key 'validation.metric': registration model '{self.spec.name}' is scored by "
                             f"'dice', 'tre' or 'loss' ('sre' is for attention-reg)")
        self.loss_function(config.loss)  # InputError naming a bad term before any work
        #: The seed-003 intra-modal term compares each modality with itself: it needs aligned pairs.
        self.paired = any(term.name == "intra-modal" for term in config.loss.terms)
        if self.paired and getattr(config.data, "prealign", None) != "ground-truth":
            raise InputError("config key 'data.prealign': the 'intra-modal' loss term needs aligned pairs "
                             "(phantoms with prealign: ground-truth); its MRI-side deformation comes from "
                             "augmentation.affine / augmentation.elastic")

    @property
    def spatial_size(self) -> list[int]:
        """The grid as the network sees it: (D, H, W) voxels."""
        return [int(p) for p in reversed(self.config.patch_size)]

    def build(self) -> tuple[torch.nn.Module, dict]:
        """The untrained network and its builder arguments (registry defaults, config, grid size)."""
        arguments = {**self.spec.arguments, **self.config.model.arguments, "spatial_size": self.spatial_size}
        try:
            return self.spec.builder(**arguments), arguments
        except (TypeError, ValueError, AssertionError) as error:
            raise InputError(f"config key 'model.arguments': {arguments} do not build {self.spec.expected}: "
                             f"{error}") from None

    def build_source(self, config, rank: int, world_size: int) -> DataSource:
        """Registration pairs of ``config.data`` on the model grid, and the validation pairs."""
        training, validation = registration_cases(config)
        augmentation = (RegistrationAugmentation(config.augmentation, config.spacing_mm, self.paired)
                        if config.augmentation.enabled or self.paired else None)
        batches = RegistrationBatches(training, config.batch_size, config.seed, rank, world_size, augmentation)
        return DataSource(batches, validation, f"{len(training)} registration pairs "
                                               f"({len(validation)} for validation)")

    def loss_function(self, loss) -> Callable:
        """The weighted terms of a :class:`.config.LossSection`."""
        return build_registration_loss([term.model_dump() for term in loss.terms])

    def loss(self, model: torch.nn.Module, batch: dict, loss_function: Callable, device: torch.device) -> torch.Tensor:
        """Training loss of ``batch`` (a scalar tensor)."""
        batch = batch_to(batch, device)
        return loss_function(model(batch["fixed_image"], batch["moving_image"]), batch)["total"]

    def _score_case(self, network, case: RegistrationCase, metric: str, loss_function, device) -> float:
        batch = batch_to({key: torch.from_numpy(np.ascontiguousarray(value)).float()[None]
                          for key, value in case.arrays().items()}, device)
        outputs = network(batch["fixed_image"], batch["moving_image"])
        if metric == "loss":
            return float(loss_function(outputs, batch)["total"])
        ddf = outputs["ddf"].float().cpu()
        labels = {key: batch[key].cpu() for key in LABEL_KEYS}
        if metric == "tre":
            return landmark_tre_mm(ddf, labels["fixed_label"], labels["moving_label"], case.spacing_mm)
        return gland_dice(warp(labels["moving_label"], ddf), labels["fixed_label"])

    def score(self, network: torch.nn.Module, cases: list, metric: str, loss_function: Callable,
              device: torch.device) -> dict:
        """``{"mean": float, "cases": {name: value}}`` of ``metric`` over the validation pairs."""
        was_training = network.training
        network.eval()
        with torch.inference_mode():
            values = {case.name: self._score_case(network, case, metric, loss_function, device) for case in cases}
        network.train(was_training)
        return {"mean": float(np.nanmean(list(values.values()))), "cases": values}

    def checkpoint(self, network: torch.nn.Module, arguments: dict, **extra) -> dict:
        """The inference checkpoint (grid size as ``patch_size``, grid spacing as ``spacing_mm``)."""
        return make_checkpoint(self.spec.name, arguments, network, self.config.spacing_mm, self.config.patch_size,
                               self.normalisation, kind=self.spec.kind, **extra)
