"""Training pairs for learned registration: TRUS/MRI pairs with gland + landmark labels on the model's grid.

Each case (files in any dataset layout, or a phantom) is put once on its registration grid
(:func:`MRITRUSFusionLib.registration.learned.grid.registration_grid`: the model's box centred on the TRUS,
as at inference), images z-scored in their field of view, label channels (0 gland, 1.. landmarks, padded
with empty channels to a common count) sampled nearest-neighbour. Cases are kept in memory.

Each sample is one case augmented with its own seed: flips and intensity changes of both images (joint),
then a random affine and elastic deformation of the MRI and its labels only (``augmentation.affine`` /
``augmentation.elastic``), which widens the misalignments the network learns to undo. Batches are drawn
by :class:`.batches.CaseSeedBatches`: one seeded generator per run, each process keeps its slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from ..io import Case, read_label_channels, read_volume
from ..losses.intra_modal import FIXED_MODALITY_IN_MOVING_SPACE, MOVING_MODALITY_IN_FIXED_SPACE
from ..phantom import generate_phantom
from ..registration.classical import register_classical
from ..registration.learned.grid import normalised_on_grid, registration_grid
from .augmentation import augment, build_augmentation
from .batches import CaseSeedBatches
from .config import AugmentationSection, TrainingConfig
from .data_config import FileDataSection
from .file_data import list_cases
from .phantom_data import phantom_overrides

IMAGE_KEYS = ("fixed_image", "moving_image")
LABEL_KEYS = ("fixed_label", "moving_label")
BATCH_KEYS = (*IMAGE_KEYS, *LABEL_KEYS, MOVING_MODALITY_IN_FIXED_SPACE, FIXED_MODALITY_IN_MOVING_SPACE)


@dataclass
class RegistrationCase:
    """One pair on its registration grid: images (1, D, H, W) float32, labels (L, D, H, W) uint8."""

    name: str
    fixed_image: np.ndarray
    moving_image: np.ndarray
    fixed_label: np.ndarray
    moving_label: np.ndarray
    spacing_mm: float

    def arrays(self) -> dict[str, np.ndarray]:
        return {key: getattr(self, key) for key in (*IMAGE_KEYS, *LABEL_KEYS)}


def labels_on_grid(channels: Sequence[sitk.Image], grid: sitk.Image,
                   transform: Optional[sitk.Transform] = None) -> np.ndarray:
    """Binary label channels sampled nearest-neighbour on ``grid`` at ``transform(x)``: (L, D, H, W) uint8."""
    return np.stack([sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(channel > 0, sitk.sitkUInt8), grid,
                                                          transform or sitk.Transform(), sitk.sitkNearestNeighbor, 0))
                     for channel in channels])


def prealignment(prealign: str, fixed: sitk.Image, moving: sitk.Image, fixed_labels: Sequence[sitk.Image],
                 moving_labels: Sequence[sitk.Image], truth: Optional[sitk.Transform]) -> Optional[sitk.Transform]:
    """The TRUS point → MRI point transform a training pair starts from: None for ``none``; the classical
    gland-driven affine of the true glands (channel 0) for ``gland-affine``; ``auto``'s mask-free gland stage
    (predicted glands; None when they are implausible) for ``auto-gland``; the known ``truth`` for
    ``ground-truth``."""
    if prealign == "gland-affine":
        return register_classical(fixed, moving, "affine", fixed_labels[0], moving_labels[0])
    if prealign == "auto-gland":
        from ..registration.methods import gland_prealignment

        return gland_prealignment(fixed, moving, device="cpu")
    return truth if prealign == "ground-truth" else None


def make_registration_case(name: str, fixed: sitk.Image, moving: sitk.Image, fixed_labels: Sequence[sitk.Image],
                           moving_labels: Sequence[sitk.Image], size: Sequence[int], spacing_mm: float,
                           prealign: str = "none", truth: Optional[sitk.Transform] = None) -> RegistrationCase:
    """A :class:`RegistrationCase` on the grid of ``size`` voxels (i, j, k) at ``spacing_mm`` around ``fixed``,
    the MRI side through the :func:`prealignment` named by ``prealign``.

    Only channels present in both label lists are kept (fixed channel ``c`` corresponds to moving channel ``c``).
    """
    grid = registration_grid(fixed, size, spacing_mm)
    count = min(len(fixed_labels), len(moving_labels))
    initial = prealignment(prealign, fixed, moving, fixed_labels, moving_labels, truth)
    return RegistrationCase(name, normalised_on_grid(fixed, grid)[None], normalised_on_grid(moving, grid, initial)[None],
                            labels_on_grid(fixed_labels[:count], grid),
                            labels_on_grid(moving_labels[:count], grid, initial), float(spacing_mm))


def file_case(case: Case, size: Sequence[int], spacing_mm: float, prealign: str = "none") -> RegistrationCase:
    """The :class:`RegistrationCase` of a dataset case (both label files required)."""
    return make_registration_case(
        case.name, read_volume(case.fixed_image, name=f"{case.name} fixed image"),
        read_volume(case.moving_image, name=f"{case.name} moving image"),
        read_label_channels(case.fixed_label, name=f"{case.name} fixed label"),
        read_label_channels(case.moving_label, name=f"{case.name} moving label"), size, spacing_mm, prealign)


def phantom_registration_case(seed: int, config: TrainingConfig, default_anatomy: bool = False) -> RegistrationCase:
    """The pair of phantom ``seed`` (anatomy drawn from ``config.data`` unless ``default_anatomy``)."""
    overrides = {"seed": int(seed)} if default_anatomy else phantom_overrides(seed, config.data)
    case = generate_phantom(**overrides)
    return make_registration_case(f"phantom{seed}", case.trus, case.mri, case.trus_labels, case.mri_labels,
                                  config.patch_size, config.spacing_mm, config.data.prealign, case.transform)


def pad_labels(cases: list[RegistrationCase]) -> list[RegistrationCase]:
    """``cases`` with every label stack padded with empty channels to the largest channel count."""
    count = max(case.fixed_label.shape[0] for case in cases)
    for case in cases:
        extra = count - case.fixed_label.shape[0]
        if extra:
            empty = np.zeros((extra, *case.fixed_label.shape[1:]), np.uint8)
            case.fixed_label = np.concatenate([case.fixed_label, empty])
            case.moving_label = np.concatenate([case.moving_label, empty])
    return cases


def registration_cases(config: TrainingConfig) -> tuple[list[RegistrationCase], list[RegistrationCase]]:
    """(training, validation) cases of ``config``, labels padded to one channel count over both."""
    size, spacing = config.patch_size, config.spacing_mm
    if isinstance(config.data, FileDataSection):
        lists, prealign = list_cases(config.data), config.data.prealign
        training = [file_case(case, size, spacing, prealign) for case in lists.training]
        validation = [file_case(case, size, spacing, prealign) for case in lists.validation]
    else:
        seeds = range(config.data.seed_start, config.data.seed_start + config.data.count)
        training = [phantom_registration_case(seed, config) for seed in seeds]
        validation = []
    validation += [phantom_registration_case(seed, config, default_anatomy=True) for seed in config.validation.seeds]
    padded = pad_labels(training + validation)
    return padded[:len(training)], padded[len(training):]


def split_augmentation(section: AugmentationSection) -> tuple[AugmentationSection, AugmentationSection]:
    """(joint part: flips + intensity, moving-only part: affine + elastic) of an augmentation section."""
    joint = section.model_copy(update={"affine": section.affine.model_copy(update={"probability": 0.0}),
                                       "elastic": section.elastic.model_copy(update={"probability": 0.0})})
    moving = section.model_copy(update={"flip_axes": [],
                                        "intensity": section.intensity.model_copy(update={"probability": 0.0})})
    return joint, moving


class RegistrationAugmentation:
    """``(sample, seed) -> sample``: joint flips/intensity on both images, affine/elastic on the MRI side.

    With ``paired`` (aligned pairs, for the seed-003 intra-modal loss), the sample also keeps the MRI before
    the MRI-side deformation ψ as ``moving_modality_in_fixed_space`` and gets ``fixed_modality_in_moving_space``:
    the TRUS deformed by the same ψ, i.e. the TRUS seen in the deformed MRI's space.
    """

    def __init__(self, section: AugmentationSection, spacing_mm: float, paired: bool = False):
        joint, moving = split_augmentation(section)
        self.paired = paired
        self.joint = build_augmentation(joint, spacing_mm, IMAGE_KEYS, LABEL_KEYS)
        moving_images = ("moving_image", FIXED_MODALITY_IN_MOVING_SPACE) if paired else ("moving_image",)
        self.moving = build_augmentation(moving, spacing_mm, moving_images, ("moving_label",))

    def __call__(self, sample: dict, seed: int) -> dict:
        sample = augment(self.joint, sample, seed, LABEL_KEYS)
        if self.paired:
            sample[MOVING_MODALITY_IN_FIXED_SPACE] = sample["moving_image"].clone()
            sample[FIXED_MODALITY_IN_MOVING_SPACE] = sample["fixed_image"].clone()
        return augment(self.moving, sample, seed + 1, LABEL_KEYS)


class RegistrationBatches(CaseSeedBatches):
    """This process's share of each global batch of augmented pairs, resumable from :meth:`state_dict`.

    Batch keys: ``fixed_image``/``moving_image`` (b, 1, D, H, W) float32 and ``fixed_label``/``moving_label``
    (b, L, D, H, W) float32 in {0, 1}.
    """

    kind = "registration"
    seed_bound = 2**31 - 2  # seed + 1 seeds the moving-side augmentation

    def __init__(self, cases: list[RegistrationCase], global_batch: int, seed: int, rank: int = 0,
                 world_size: int = 1, augmentation: Optional[RegistrationAugmentation] = None):
        super().__init__(cases, global_batch, [int(seed), 1], rank, world_size)
        self.augmentation = augmentation

    def sample(self, case: RegistrationCase, seed: int) -> dict[str, torch.Tensor]:
        """The arrays of ``case``, augmented with ``seed``, as float32 tensors of the batch keys."""
        sample = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in case.arrays().items()}
        if self.augmentation is not None:
            sample = self.augmentation(sample, seed)
        return {key: torch.as_tensor(value).float() for key, value in sample.items() if key in BATCH_KEYS}
