"""The trainer's task for Attention-Reg (seed 002): rigid MRI→TRUS registration regressing 6 parameters.

Data (``data.source: attention-reg-sample``, :class:`.data_config.AttentionRegSampleDataSection`): the
authors' sample cases and/or rigid phantom pairs; each training item is a random rigid perturbation ``P`` of
the truth, the MRI resampled through ``T_true ∘ P⁻¹`` onto the network grid (``patch_size`` voxels at
``spacing_mm``), the target ``P`` (:func:`~MRITRUSFusionLib.registration.learned.attention_reg_data.make_batch`).
Loss ``mse``: mean squared error on the 6 parameters (mm and degrees, the paper's loss). Validation metric
``sre``: mean surface registration error in mm on the proxy gland surface after ``data.val_stages`` rounds of
the iterative refinement from fixed starts (lower is better).

Multi-stage training (the paper's concatenated stages): ``model.previous_stages`` names an ``attention-reg``
checkpoint with the same ``model.arguments``. The new network starts from its last stage, validation runs its
stages before the new one, and the checkpoint holds every stage (``stage_state_dicts``), which is what
:func:`~MRITRUSFusionLib.registration.learned.attention_reg_infer.load_attention_reg` reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..memory_format import batch_to
from ..metrics.registration import surface_registration_error
from ..registration.learned.attention_reg import AttentionReg
from ..registration.learned.attention_reg_data import (NORMALISATION, RegistrationSource, ValidationItem,
                                                       default_sample_root, make_batch, phantom_sources,
                                                       sample_sources, validation_items)
from ..registration.learned.attention_reg_infer import MODEL_NAME, load_attention_reg, refine
from ..segmentation.checkpoints import make_checkpoint
from .batches import GeneratorBatches
from .data_config import AttentionRegSampleDataSection
from .sources import DataSource

#: Offset of the validation draws' seed from the run's ``seed`` (the former loop's choice, kept).
VALIDATION_SEED_OFFSET = 1000


class AttentionRegBatches(GeneratorBatches):
    """This process's share of each global batch of perturbed pairs, from one seeded generator per run
    (resumable from :meth:`state_dict`).

    Batch keys: ``trus`` and ``mri`` (b, 1, D, H, W) float32 patches in [0, 1], ``target`` (b, 6) float32.
    """

    kind = "attention-reg"

    def __init__(self, sources: Sequence[RegistrationSource], data: AttentionRegSampleDataSection,
                 patch_size: Sequence[int], spacing_mm: float, global_batch: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        super().__init__(int(seed), global_batch, rank, world_size)
        self.sources = list(sources)
        self.data = data
        self.patch_size = [int(p) for p in patch_size]
        self.spacing_mm = float(spacing_mm)

    def next_batch(self) -> dict[str, torch.Tensor]:
        """The next step's items of this process (every process draws the whole global batch)."""
        data = self.data
        trus, mri, target = make_batch(self.sources, self.rng, self.global_batch, data.max_translation_mm,
                                       data.max_rotation_deg, data.max_sre_mm, data.centre_jitter_mm,
                                       self.patch_size, self.spacing_mm, keep=self.mine)
        return {"trus": trus, "mri": mri, "target": target}


class AttentionRegTask:
    """``AttentionReg(**model.arguments)``: ``(trus, mri)`` patches -> 6 rigid parameters, MSE, SRE."""

    def __init__(self, config):
        self.config = config
        self.data: AttentionRegSampleDataSection = config.data
        self._check_config()
        #: Builder arguments as plain values (lists), as checkpoints store them.
        self.arguments: dict = json.loads(json.dumps(config.model.arguments))
        self.previous, self.previous_states = self._previous_stages()
        if self.data.val_stages < len(self.previous) + 1:
            raise InputError(f"config key 'data.val_stages': {self.data.val_stages} rounds never reach the stage "
                             f"trained here ({len(self.previous)} previous stage(s)); use at least "
                             f"{len(self.previous) + 1}")

    def _check_config(self) -> None:
        """:class:`InputError` naming the first config key this task cannot honour."""
        config = self.config
        if not isinstance(config.data, AttentionRegSampleDataSection):
            raise InputError(f"config key 'data.source': '{MODEL_NAME}' trains on 'attention-reg-sample' (sample "
                             f"cases and/or rigid phantoms), got '{config.data.source}'")
        losses = [("loss", config.loss)] + [(f"phases[{i}].loss", phase.loss) for i, phase in enumerate(config.phases)
                                           if phase.loss is not None]
        for key, loss in losses:
            if loss.name != "mse":
                raise InputError(f"config key '{key}.name': '{MODEL_NAME}' is trained with 'mse' on its 6 rigid "
                                 f"parameters, got '{loss.name}'")
        if config.validation.metric != "sre":
            raise InputError(f"config key 'validation.metric': '{MODEL_NAME}' is scored by 'sre' (surface "
                             f"registration error in mm after the refinement), got '{config.validation.metric}'")
        if config.augmentation.enabled:
            raise InputError(f"config key 'augmentation': '{MODEL_NAME}' draws its own rigid perturbations "
                             f"(data.max_sre_mm, ...); leave augmentation out")
        clash = sorted(set(self.data.phantom_seeds) & set(config.validation.seeds))
        if clash:
            raise InputError(f"config key 'validation.seeds': phantom seeds {clash} are also training phantoms "
                             f"(data.phantom_seeds)")
        if (self.data.train_cases or self.data.val_cases) and not (self.sample_root / "gt.txt").is_file():
            raise InputError(f"config key 'data.root': {self.sample_root}: no attention-reg sample (gt.txt)")

    @property
    def sample_root(self) -> Path:
        """The sample folder: ``data.root`` or the default one."""
        return self.data.root if self.data.root is not None else default_sample_root()

    def _previous_stages(self) -> tuple[list[AttentionReg], list[dict]]:
        """The stage networks and state dicts of ``model.previous_stages`` (none when unset)."""
        path: Optional[Path] = self.config.model.previous_stages
        if path is None:
            return [], []
        if path.resolve() == Path(self.config.output).resolve():
            raise InputError(f"config key 'model.previous_stages': {path} is also the output; write the new "
                             f"checkpoint elsewhere so a resumed run still reads the previous stages")
        networks, checkpoint = load_attention_reg(path, "cpu")
        if checkpoint["arguments"] != self.arguments:
            raise InputError(f"config key 'model.previous_stages': {path} has arguments {checkpoint['arguments']}, "
                             f"model.arguments are {self.arguments}")
        return networks, checkpoint.get("stage_state_dicts") or [checkpoint["state_dict"]]

    def build(self) -> tuple[torch.nn.Module, dict]:
        """The network (initialised from the last previous stage, if any) and its builder arguments."""
        try:
            network = AttentionReg(**self.arguments)
        except (TypeError, ValueError) as error:
            raise InputError(f"config key 'model.arguments': {self.arguments} do not build AttentionReg: "
                             f"{error}") from None
        if self.previous_states:
            network.load_state_dict(self.previous_states[-1])
        return network, dict(self.arguments)

    def build_source(self, config, rank: int, world_size: int) -> DataSource:
        """Perturbed training pairs of the sample's ``train_cases`` and ``phantom_seeds``; fixed validation
        starts of ``val_cases`` and the ``validation.seeds`` phantoms."""
        if config.batch_size % world_size:
            raise InputError(f"config key 'batch_size': {config.batch_size} does not split evenly over "
                             f"{world_size} processes")
        data = self.data
        training = sample_sources(data.train_cases, self.sample_root) + phantom_sources(data.phantom_seeds)
        batches = AttentionRegBatches(training, data, config.patch_size, config.spacing_mm, config.batch_size,
                                      config.seed, rank, world_size)
        validation = sample_sources(data.val_cases, self.sample_root) + phantom_sources(config.validation.seeds)
        rng = np.random.default_rng(config.seed + VALIDATION_SEED_OFFSET)
        items = validation_items(validation, rng, data.val_perturbations, data.max_translation_mm,
                                 data.max_rotation_deg, data.max_sre_mm, config.patch_size, config.spacing_mm)
        return DataSource(batches, items, f"attention-reg pairs of {len(training)} sources "
                                          f"({', '.join(s.name for s in training)}); {len(items)} validation starts")

    def loss_function(self, loss) -> Callable:
        """Mean squared error on the parameters (the only loss of this task, checked at construction)."""
        return F.mse_loss

    def loss(self, model: torch.nn.Module, batch: dict, loss_function: Callable, device: torch.device) -> torch.Tensor:
        """Training loss of ``batch`` (a scalar tensor)."""
        batch = batch_to(batch, device)
        return loss_function(model(batch["trus"], batch["mri"]), batch["target"])

    def _sre(self, networks: list[AttentionReg], item: ValidationItem, device: torch.device) -> float:
        """SRE (mm) of ``item``'s start after ``data.val_stages`` refinement rounds of ``networks``."""
        source = item.source
        result = refine(networks, source.trus, source.mri, item.start, source.centre_mm, self.config.patch_size,
                        self.config.spacing_mm, self.data.val_stages, device)
        return surface_registration_error(item.mask, result, source.true_transform)

    def score(self, network: torch.nn.Module, items: list, metric: str, loss_function: Callable,
              device: torch.device) -> dict:
        """``{"mean": float, "cases": {name: SRE in mm}}`` over the validation starts (previous stages first)."""
        networks = [previous.to(device) for previous in self.previous] + [network]
        was_training = network.training
        network.eval()
        values = {item.name: self._sre(networks, item, device) for item in items}
        network.train(was_training)
        return {"mean": float(np.mean(list(values.values()))), "cases": values}

    def checkpoint(self, network: torch.nn.Module, arguments: dict, **extra) -> dict:
        """The checkpoint :func:`load_attention_reg` reads, with every stage when continuing earlier ones."""
        checkpoint = make_checkpoint(MODEL_NAME, arguments, network, self.config.spacing_mm, self.config.patch_size,
                                     NORMALISATION, **extra)
        if self.previous_states:
            checkpoint["stage_state_dicts"] = [*self.previous_states, checkpoint["state_dict"]]
        return checkpoint
