"""Training patches from files (DeepReg paired, μ-RegPro or CSV manifest), prepared once and cached.

Per case, :class:`PrepareCased` (deterministic, so ``monai.data.CacheDataset`` keeps its result and an epoch
never re-reads files) reads every role with SimpleITK, resamples it onto the reference role's grid at the
training spacing (physical space: origin and direction kept), crops around the gland with a margin, pads to
at least one patch and z-score normalises the images. Then, per sample, ``RandCropByPosNegLabeld`` cuts a
patch biased towards the target and :mod:`.augmentation` augments it, with a seed derived from the global
sample index: sample ``k`` is the same whichever process or worker draws it, and a run resumes from an index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import CacheDataset
from monai.transforms import Compose, MapTransform, RandCropByPosNegLabeld
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import InputError
from ..io import Case, deepreg_paired_cases, manifest_cases, muregpro_cases, read_label_channels, read_volume
from ..segmentation.preprocessing import model_grid, normalise, resample_onto
from .augmentation import augment
from .case_names import drop, select
from .data_config import DeepRegDataSection, FileDataSection, MuRegProDataSection


@dataclass
class CaseLists:
    """Training and validation cases of a file source (held-out cases removed)."""

    training: list[Case]
    validation: list[Case]


def _layout_cases(data: FileDataSection, split: Optional[str] = None) -> list[Case]:
    if isinstance(data, DeepRegDataSection):
        return deepreg_paired_cases(data.path)
    if isinstance(data, MuRegProDataSection):
        return muregpro_cases(data.path, split or data.split)
    return manifest_cases(data.path)


def list_cases(data: FileDataSection) -> CaseLists:
    """The cases ``data`` trains and validates on.

    Training: ``data.cases`` (all when empty) minus held-out and validation cases. Validation:
    ``data.validation_cases`` of the same listing, plus the μ-RegPro ``validation_split``.

    Raises:
        InputError: no training case left, or a selected case lacks a role the config reads.
    """
    listed = {case.name: case for case in _layout_cases(data)}
    allowed = drop(listed, data.held_out)
    validation = select(allowed, data.validation_cases) if data.validation_cases else []
    training = [name for name in select(allowed, data.cases) if name not in validation]
    cases = CaseLists([listed[name] for name in training], [listed[name] for name in validation])
    if isinstance(data, MuRegProDataSection) and data.validation_split:
        extra = {case.name: case for case in _layout_cases(data, data.validation_split)}
        cases.validation += [extra[name] for name in drop(extra, data.held_out)]
    if not cases.training:
        raise InputError(f"config key 'data.cases': no training case in {data.path} "
                         f"(selected {data.cases or 'all'}, held out {data.held_out})")
    for case in cases.training + cases.validation:
        case_record(case, data.roles)
    return cases


def case_record(case: Case, roles: Sequence[str]) -> dict:
    """``{"name": ..., role: path}`` of ``case`` for every role; :class:`InputError` naming a missing one."""
    record = {"name": case.name}
    for role in roles:
        path = getattr(case, role, None) if role in ("fixed_image", "moving_image", "fixed_label",
                                                      "moving_label") else case.extras.get(role)
        if path is None:
            raise InputError(f"case {case.name}: no file for role '{role}' (named in the config's data section)")
        record[role] = str(path)
    return record


def _bounding_box(mask: np.ndarray, margin: int, patch: Sequence[int]) -> tuple[slice, ...]:
    """Slices of the box around ``mask > 0`` grown by ``margin`` voxels and to at least ``patch``."""
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    found = np.argwhere(mask > 0)
    low, high = found.min(0) - margin, found.max(0) + 1 + margin
    short = np.maximum(np.asarray(patch) - (high - low), 0)
    low, high = low - short // 2, high + (short - short // 2)
    low, high = np.maximum(low, 0), np.minimum(high, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def _pad(array: np.ndarray, patch: Sequence[int], value: float) -> np.ndarray:
    """``array`` (C, D, H, W) padded at the end of each spatial axis to at least ``patch``."""
    widths = [(0, 0)] + [(0, max(p - n, 0)) for n, p in zip(array.shape[1:], patch)]
    return np.pad(array, widths, constant_values=value) if any(w[1] for w in widths) else array


class PrepareCased(MapTransform):
    """Deterministic preparation of one case record into ``{"name", "image", "label"}`` arrays.

    ``image``: (C, D, H, W) float32, the ``data.image`` roles normalised; ``label``: (1, D, H, W) uint8, channel
    ``data.label_channel`` of ``data.label``. All on the reference grid at ``spacing_mm``, cropped and padded.
    """

    def __init__(self, data: FileDataSection, spacing_mm: float, patch: Sequence[int], normalisation: str):
        super().__init__(keys=data.roles)
        self.data, self.spacing_mm = data, float(spacing_mm)
        self.patch, self.normalisation = tuple(patch), normalisation

    def _read(self, record: dict, role: str, grid: sitk.Image) -> np.ndarray:
        """(C, D, H, W) array of ``role`` on ``grid`` (labels: nearest neighbour, every channel)."""
        name = f"case {record['name']} {role}"
        if self.data.is_label(role):
            channels = read_label_channels(record[role], name=name)
            return np.stack([sitk.GetArrayFromImage(resample_onto(c, grid, sitk.sitkNearestNeighbor))
                             for c in channels]).astype(np.uint8)
        image = read_volume(record[role], name=name)
        return sitk.GetArrayFromImage(resample_onto(image, grid, sitk.sitkLinear))[None].astype(np.float32)

    def __call__(self, record: dict) -> dict:
        reference = read_volume(record[self.data.reference], name=f"case {record['name']} {self.data.reference}")
        grid = model_grid(reference, self.spacing_mm)
        arrays = {role: self._read(record, role, grid) for role in self.data.roles}
        gland = arrays[self.data.crop_around][0] if self.data.crop_around else None
        if gland is not None and self.data.crop_margin_mm is not None:
            box = (slice(None),) + _bounding_box(gland, int(np.ceil(self.data.crop_margin_mm / self.spacing_mm)),
                                                 self.patch)
            arrays = {role: array[box] for role, array in arrays.items()}
        arrays = {role: _pad(array, self.patch, 0) for role, array in arrays.items()}
        label = arrays[self.data.label]
        if self.data.label_channel >= label.shape[0]:
            raise InputError(f"case {record['name']}: config key 'data.label_channel' is {self.data.label_channel} "
                             f"but {self.data.label} has {label.shape[0]} channel(s)")
        mask = arrays[self.data.crop_around][0] > 0 if self.data.crop_around else None
        images = [self._normalise(arrays[role][0], mask) for role in self.data.image]
        return {"name": record["name"], "image": np.stack(images),
                "label": label[self.data.label_channel][None].astype(np.uint8)}

    def _normalise(self, array: np.ndarray, gland: Optional[np.ndarray]) -> np.ndarray:
        """z-score of ``array``: over all voxels, voxels > 0, or (``zscore-gland``) voxels inside the gland."""
        if self.normalisation != "zscore-gland":
            return normalise(array, self.normalisation)
        inside = array[gland] if gland is not None and gland.sum() >= 64 else array
        return ((array - inside.mean()) / max(float(inside.std()), 1e-6)).astype(np.float32)


def prepared_cases(cases: Sequence[Case], data: FileDataSection, spacing_mm: float, patch: Sequence[int],
                   normalisation: str, cache_rate: float = 1.0) -> CacheDataset:
    """``monai.data.CacheDataset`` of the prepared ``cases`` (``patch`` in D/H/W voxels)."""
    records = [case_record(case, data.roles) for case in cases]
    transform = Compose([PrepareCased(data, spacing_mm, patch, normalisation)])
    return CacheDataset(records, transform, cache_rate=cache_rate, num_workers=0, progress=False)


class PatchDataset(Dataset):
    """Sample ``k`` (any index >= 0): case ``order_e[k mod n]`` of epoch ``e = k // n`` (a seeded permutation),
    a patch cut around the target with probability ``foreground_fraction``, then augmented; seeded by ``k``."""

    def __init__(self, cases: CacheDataset, patch: Sequence[int], foreground_fraction: float, seed: int,
                 augmentation: Optional[Compose] = None):
        self.cases, self.seed, self.augmentation = cases, int(seed), augmentation
        self.crop = RandCropByPosNegLabeld(["image", "label"], "label", spatial_size=tuple(patch),
                                           pos=foreground_fraction, neg=1.0 - foreground_fraction, num_samples=1)

    def __len__(self) -> int:
        return 2**62  # endless: indices come from :class:`ShardSampler`

    def case_index(self, index: int) -> int:
        epoch, offset = divmod(int(index), len(self.cases))
        return int(np.random.default_rng([self.seed, 1, epoch]).permutation(len(self.cases))[offset])

    def __getitem__(self, index: int) -> dict:
        case = self.cases[self.case_index(index)]
        seeds = np.random.default_rng([self.seed, 2, int(index)]).integers(2**31, size=2)
        self.crop.set_random_state(seed=int(seeds[0]))
        patch = self.crop({"image": case["image"], "label": case["label"]})[0]
        return augment(self.augmentation, patch, int(seeds[1]))


class ShardSampler(Sampler):
    """Endless global sample indices of one process: step ``s`` (from ``start``) gives it indices
    ``start + s * global_batch + rank * local_batch + [0, local_batch)``."""

    def __init__(self, start: int, local_batch: int, rank: int, world_size: int):
        self.start, self.local_batch = int(start), int(local_batch)
        self.rank, self.world_size = int(rank), int(world_size)

    def __iter__(self) -> Iterator[int]:
        step = 0
        while True:
            first = self.start + (step * self.world_size + self.rank) * self.local_batch
            yield from range(first, first + self.local_batch)
            step += 1


class FileBatches:
    """This process's share of each global batch of file patches, resumable from :meth:`state_dict`."""

    def __init__(self, dataset: PatchDataset, global_batch: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0):
        self.dataset, self.global_batch = dataset, int(global_batch)
        self.rank, self.world_size = int(rank), int(world_size)
        self.num_workers = int(num_workers)
        self.position = 0
        self._iterator: Optional[Iterator] = None

    def next_batch(self) -> dict[str, torch.Tensor]:
        """``{"image": (b, C, D, H, W) float32, "label": (b, 1, D, H, W) int64}`` of the next step."""
        if self._iterator is None:
            local = self.global_batch // self.world_size
            sampler = ShardSampler(self.position, local, self.rank, self.world_size)
            self._iterator = iter(DataLoader(self.dataset, batch_size=local, sampler=sampler,
                                             num_workers=self.num_workers, persistent_workers=False))
        batch = next(self._iterator)
        self.position += self.global_batch
        return batch

    def state_dict(self) -> dict:
        """The global index of the next sample."""
        return {"kind": "files", "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a :meth:`state_dict`."""
        self.position = int(state["position"])
        self.close()

    def close(self) -> None:
        """Stop loader workers."""
        self._iterator = None
