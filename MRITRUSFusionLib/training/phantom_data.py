"""Training patches from synthetic phantoms: varied cases, tumour-biased crops, flips and intensity jitter.

Each case is a :func:`~MRITRUSFusionLib.phantom.generate_phantom` TRUS with its tumour label, resampled to
the training spacing (same physical extent, as inference does) and normalised as the model expects.

:class:`PhantomBatches` turns the patches into the resumable, rank-sharded batch stream the trainer reads:
one seeded generator draws every sample of each global batch on every process, and each process keeps
its own slice, so a distributed run sees exactly the batches of a single-process run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..phantom import PhantomConfig, generate_phantom
from ..segmentation.preprocessing import model_grid, normalise, resample_onto
from .batches import GeneratorBatches
from .data_config import PhantomDataSection


@dataclass
class PatchCase:
    """One training case at the training spacing: normalised image and tumour mask, numpy D/H/W order."""

    image: np.ndarray
    tumour: np.ndarray
    #: D/H/W indices of the tumour voxels (crop centres of tumour-biased patches).
    tumour_voxels: np.ndarray


def phantom_overrides(seed: int, data: PhantomDataSection) -> dict:
    """``generate_phantom`` keyword overrides of the case ``seed``: tumour count, contrast and size, gland
    size, drawn from the ranges of ``data`` with a generator seeded by ``seed`` (reproducible)."""
    rng = np.random.default_rng([seed, 7919])
    scale = rng.uniform(*data.gland_scale)
    overrides = {
        "seed": int(seed),
        "n_tumours": int(rng.integers(data.n_tumours[0], data.n_tumours[1] + 1)),
        "tumour_trus_echogenicity": float(rng.uniform(*data.tumour_echogenicity)),
        "tumour_radius_mm": tuple(float(r) for r in data.tumour_radius_mm),
        "gland_radii_mm": tuple(float(r * scale) for r in PhantomConfig().gland_radii_mm),
    }
    for grid in ("trus_size", "trus_spacing", "mri_size", "mri_spacing"):
        if getattr(data, grid) is not None:
            overrides[grid] = tuple(getattr(data, grid))
    return overrides


def make_case(trus: sitk.Image, tumours: sitk.Image, spacing_mm: float, normalisation: str) -> PatchCase:
    """A :class:`PatchCase` from a TRUS image and its tumour label (any grid) at ``spacing_mm`` (mm)."""
    grid = model_grid(trus, spacing_mm)
    image = resample_onto(sitk.Cast(trus, sitk.sitkFloat32), grid, sitk.sitkLinear)
    label = resample_onto(sitk.Cast(tumours > 0, sitk.sitkUInt8), grid, sitk.sitkNearestNeighbor)
    tumour = sitk.GetArrayFromImage(label).astype(np.uint8)
    return PatchCase(image=normalise(sitk.GetArrayViewFromImage(image), normalisation), tumour=tumour,
                     tumour_voxels=np.argwhere(tumour > 0))


def phantom_case(seed: int, data: PhantomDataSection, spacing_mm: float, normalisation: str) -> PatchCase:
    """The training case of phantom ``seed`` (see :func:`phantom_overrides`)."""
    case = generate_phantom(**phantom_overrides(seed, data))
    return make_case(case.trus, case.trus_tumours, spacing_mm, normalisation)


def _crop_start(centre: np.ndarray, shape: Sequence[int], patch: Sequence[int]) -> np.ndarray:
    """Start index of a ``patch``-sized window around ``centre`` kept inside ``shape`` where possible."""
    start = np.asarray(centre) - np.asarray(patch) // 2
    return np.clip(start, 0, np.maximum(np.asarray(shape) - np.asarray(patch), 0))


def crop(array: np.ndarray, start: Sequence[int], patch: Sequence[int], fill: float) -> np.ndarray:
    """``array[start : start + patch]`` (D/H/W), padded with ``fill`` where the array is smaller."""
    out = np.full(patch, fill, dtype=array.dtype)
    region = tuple(slice(s, s + p) for s, p in zip(start, patch))
    piece = array[region]
    out[tuple(slice(0, n) for n in piece.shape)] = piece
    return out


class PhantomPatches(IterableDataset):
    """Endless ``(image, label)`` patches, tensors of shape (1, D, H, W): float32 image, int64 label (0/1).

    Args:
        data: the ``data`` section of the training configuration.
        patch_size: patch side lengths in voxels, ITK (i, j, k) order.
        spacing_mm: isotropic training spacing (mm).
        normalisation: intensity normalisation name of the model.
        seed: seed of the sampling generator (each DataLoader worker adds its id).
        cases: prepared cases to sample from; by default the phantoms of ``data`` (generated on first use).
    """

    def __init__(self, data: PhantomDataSection, patch_size: Sequence[int], spacing_mm: float,
                 normalisation: str, seed: int = 0, cases: Optional[list[PatchCase]] = None):
        super().__init__()
        self.data = data
        self.patch = tuple(int(p) for p in reversed(patch_size))  # i, j, k -> D, H, W
        self.spacing_mm = float(spacing_mm)
        self.normalisation = normalisation
        self.seed = int(seed)
        self._cases = cases

    @property
    def cases(self) -> list[PatchCase]:
        """The training cases (generated once, in seed order)."""
        if self._cases is None:
            seeds = range(self.data.seed_start, self.data.seed_start + self.data.count)
            self._cases = [phantom_case(s, self.data, self.spacing_mm, self.normalisation) for s in seeds]
        return self._cases

    def _centre(self, case: PatchCase, rng: np.random.Generator) -> np.ndarray:
        """A crop centre: near a random tumour voxel with probability ``tumour_patch_fraction``, else uniform."""
        if len(case.tumour_voxels) and rng.random() < self.data.tumour_patch_fraction:
            jitter = rng.integers(-np.asarray(self.patch) // 4, np.asarray(self.patch) // 4 + 1)
            return case.tumour_voxels[rng.integers(len(case.tumour_voxels))] + jitter
        return np.array([rng.integers(n) for n in case.image.shape])

    def _augment(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        """Random flips of the configured axes, intensity scale/shift and Gaussian noise."""
        for axis in self.data.flip_axes:
            if rng.random() < 0.5:
                image, label = np.flip(image, 2 - axis), np.flip(label, 2 - axis)  # ITK axis -> numpy axis
        image = image * rng.uniform(*self.data.intensity_scale) + rng.uniform(-1, 1) * self.data.intensity_shift
        if self.data.noise_std > 0:
            image = image + rng.normal(0.0, rng.uniform(0, self.data.noise_std), size=image.shape)
        return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(label)

    def sample(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One augmented patch pair drawn with ``rng``."""
        case = self.cases[rng.integers(len(self.cases))]
        start = _crop_start(self._centre(case, rng), case.image.shape, self.patch)
        image = crop(case.image, start, self.patch, float(case.image.min()))
        label = crop(case.tumour, start, self.patch, 0)
        image, label = self._augment(image, label, rng)
        return torch.from_numpy(image)[None], torch.from_numpy(label.astype(np.int64))[None]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        worker = get_worker_info()
        rng = np.random.default_rng([self.seed, worker.id if worker else 0])
        while True:
            yield self.sample(rng)


#: A patch augmentation: ``(sample, seed) -> sample`` on ``{"image", "label"}`` tensors (see :mod:`.augmentation`).
Augment = Callable[[dict, int], dict]


class PhantomBatches(GeneratorBatches):
    """This process's share of each global batch of phantom patches, resumable from :meth:`state_dict`.

    Args:
        patches: the patch sampler.
        global_batch: samples per optimiser step over all processes.
        rank, world_size: this process and the number of processes (``global_batch % world_size == 0``).
        augment: optional extra augmentation; its seed is drawn from the stream for every sample.

    Every process draws all ``global_batch`` samples from one generator seeded ``[seed, 0]`` (as a
    single-process ``DataLoader`` over :class:`PhantomPatches` does) and keeps samples
    ``rank * b .. (rank + 1) * b - 1`` with ``b = global_batch / world_size``.
    """

    kind = "phantom"

    def __init__(self, patches: PhantomPatches, global_batch: int, rank: int = 0, world_size: int = 1,
                 augment: Optional[Augment] = None):
        super().__init__([patches.seed, 0], global_batch, rank, world_size)
        self.patches = patches
        self.augment = augment

    def next_batch(self) -> dict[str, torch.Tensor]:
        """``{"image": (b, 1, D, H, W) float32, "label": (b, 1, D, H, W) int64}`` of the next step."""
        samples = []
        for index in range(self.global_batch):
            image, label = self.patches.sample(self.rng)
            sample = {"image": image, "label": label}
            if self.augment is not None:
                seed = int(self.rng.integers(2**31))
                sample = self.augment(sample, seed) if index in self.mine else sample
            if index in self.mine:
                samples.append(sample)
        return {key: torch.stack([sample[key] for sample in samples]) for key in ("image", "label")}
