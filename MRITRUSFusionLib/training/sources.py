"""Where a run's data comes from: this process's batch stream and the validation volumes, for any source.

A batch stream has ``next_batch() -> {"image", "label"}``, ``state_dict()``, ``load_state_dict()`` and
``close()``: :class:`.phantom_data.PhantomBatches` (endless phantom patches) or :class:`.file_data.FileBatches`
(cached file cases). Validation volumes are whole prepared cases at the training spacing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Union

import numpy as np

from ..errors import InputError
from ..phantom import generate_phantom
from .augmentation import augment, build_augmentation
from .config import TrainingConfig
from .data_config import FileDataSection
from .file_data import FileBatches, PatchDataset, list_cases, prepared_cases
from .phantom_data import PhantomBatches, PhantomPatches, make_case

Batches = Union[PhantomBatches, FileBatches]


@dataclass
class ValidationCase:
    """One validation volume at the training spacing: image (C, D, H, W) float32, label (D, H, W) int."""

    name: str
    image: np.ndarray
    label: np.ndarray


@dataclass
class DataSource:
    """The batch stream of this process and the validation volumes (the same on every process)."""

    batches: Batches
    validation: list[ValidationCase]
    description: str


def _patch_dhw(config: TrainingConfig) -> tuple[int, int, int]:
    return tuple(int(p) for p in reversed(config.patch_size))  # i, j, k -> D, H, W


def _phantom_validation(config: TrainingConfig, normalisation: str) -> list[ValidationCase]:
    """Default phantoms of ``validation.seeds``: TRUS and tumour mask at the training spacing."""
    cases = []
    for seed in config.validation.seeds:
        phantom = generate_phantom(seed=seed)
        case = make_case(phantom.trus, phantom.trus_tumours, config.spacing_mm, normalisation)
        cases.append(ValidationCase(f"phantom{seed}", case.image[None], case.tumour))
    return cases


def _phantom_source(config: TrainingConfig, normalisation: str, rank: int, world_size: int) -> DataSource:
    patches = PhantomPatches(config.data, config.patch_size, config.spacing_mm, normalisation, config.seed)
    pipeline = build_augmentation(config.augmentation, config.spacing_mm)
    extra = functools.partial(augment, pipeline) if pipeline is not None else None
    batches = PhantomBatches(patches, config.batch_size, rank, world_size, extra)
    return DataSource(batches, _phantom_validation(config, normalisation),
                      f"{len(patches.cases)} phantom cases (seeds {config.data.seed_start}.."
                      f"{config.data.seed_start + config.data.count - 1})")


def _file_source(config: TrainingConfig, normalisation: str, rank: int, world_size: int) -> DataSource:
    data: FileDataSection = config.data  # type: ignore[assignment]
    lists = list_cases(data)
    patch = _patch_dhw(config)
    cache = prepared_cases(lists.training, data, config.spacing_mm, patch, normalisation, data.cache_rate)
    pipeline = build_augmentation(config.augmentation, config.spacing_mm)
    dataset = PatchDataset(cache, patch, data.foreground_fraction, config.seed, pipeline)
    batches = FileBatches(dataset, config.batch_size, rank, world_size, data.num_workers)
    prepared = prepared_cases(lists.validation, data, config.spacing_mm, patch, normalisation)
    validation = [ValidationCase(item["name"], np.asarray(item["image"]), np.asarray(item["label"])[0])
                  for item in (prepared[index] for index in range(len(prepared)))]
    validation += _phantom_validation(config, normalisation)
    return DataSource(batches, validation, f"{len(lists.training)} {data.source} cases from {data.path} "
                                           f"({len(lists.validation)} for validation)")


def build_source(config: TrainingConfig, normalisation: str, rank: int = 0, world_size: int = 1) -> DataSource:
    """The :class:`DataSource` of ``config`` for process ``rank`` of ``world_size``.

    Raises:
        InputError: the global batch does not split evenly over the processes, or a file source is unusable.
    """
    if config.batch_size % world_size:
        raise InputError(f"config key 'batch_size': {config.batch_size} does not split evenly over "
                         f"{world_size} processes")
    if isinstance(config.data, FileDataSection):
        return _file_source(config, normalisation, rank, world_size)
    return _phantom_source(config, normalisation, rank, world_size)
