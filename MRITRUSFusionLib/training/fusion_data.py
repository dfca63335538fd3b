"""Phantom training cases for the tumour models that use the MRI (``concat``, ``reg-enhanced``, ``csad``).

A case is the phantom of one seed (anatomy, tumour count, size and TRUS contrast drawn from the ``data`` section
by :func:`.phantom_data.phantom_overrides`), with every input role of the model (``trus``, ``mri``, ``adc``: the
model spec's ``inputs``) on the model grid of the reference role (the first), as ``segment`` prepares them:
:func:`~MRITRUSFusionLib.segmentation.preprocessing.model_grid` at the training spacing, each channel normalised
on its own. Roles of the reference's space are resampled once. MRI-space roles on a TRUS reference are resampled
per sample through the phantom's true transform (TRUS point -> MRI point) composed with a random rigid error
(:func:`rigid_error`; ``data.mri_misalignment_mm``/``_deg``, zero: a perfect registration), as ``segment`` does
through the user's ``--transform``. The ``adc`` role is :func:`~MRITRUSFusionLib.segmentation.synthetic_adc.
synthetic_adc` of the phantom's MRI.

Targets: the tumour mask of the reference space (``label``) and, for joint registration (``reg-enhanced``), the
gland and tumour masks of both images on the reference grid, the MRI ones moved by the same misaligned transform
(``fixed_label``, ``fixed_tumour``, ``moving_label``, ``moving_tumour``; the keys of
:class:`MRITRUSFusionLib.losses.vit_affine.ViTAffineLoss`).

Each sample is one case: a patch of ``patch_size`` voxels (the whole grid when it is that size) centred near a
tumour voxel with probability ``data.tumour_patch_fraction``, flipped along ``data.flip_axes`` and jittered in
intensity per channel like :class:`.phantom_data.PhantomPatches`; then ``augmentation`` (MONAI) if enabled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import InputError
from ..phantom import PhantomCase, generate_phantom
from ..segmentation.inference import MRI_SPACE_ROLES
from ..segmentation.preprocessing import model_grid, normalise
from ..segmentation.synthetic_adc import synthetic_adc
from .augmentation import augment, build_augmentation
from .batches import CaseSeedBatches
from .config import TrainingConfig
from .data_config import PhantomDataSection
from .phantom_data import _crop_start, crop, phantom_overrides
from .sources import ValidationCase

#: Values of the label maps of a case: gland (outside tumours) and tumour.
GLAND, TUMOUR = 1, 2
#: Batch keys of the gland and tumour masks of both images (joint registration).
REGISTRATION_KEYS = ("fixed_label", "fixed_tumour", "moving_label", "moving_tumour")
#: Spacing (mm) at which the phantom's displacement field is kept (smooth: sigma 18 mm; error < 0.05 mm).
FIELD_SPACING_MM = 2.4


def _space(role: str) -> str:
    return "mri" if role in MRI_SPACE_ROLES else "trus"


def rigid_error(rng: np.random.Generator, centre_mm: Sequence[float], max_mm: float,
                max_deg: float) -> sitk.Euler3DTransform:
    """A random rigid transform about ``centre_mm`` (LPS mm): translation of length uniform in [0, ``max_mm``]
    in a uniformly random direction, rotations uniform in ±``max_deg`` degrees about each axis."""
    direction = rng.normal(size=3)
    translation = direction / np.linalg.norm(direction) * rng.uniform(0.0, max_mm)
    angles = np.deg2rad(rng.uniform(-max_deg, max_deg, size=3))
    error = sitk.Euler3DTransform()
    error.SetCenter([float(c) for c in centre_mm])
    error.SetRotation(*(float(a) for a in angles))
    error.SetTranslation([float(t) for t in translation])
    return error


def misaligned(transform: sitk.Transform, error: sitk.Transform) -> sitk.CompositeTransform:
    """``x -> transform(error(x))``: a TRUS -> MRI transform made wrong by ``error`` (TRUS space), as one flat
    composite (the components of ``transform``, then ``error``, applied first) that ``.h5`` files store."""
    composite = sitk.CompositeTransform(3)
    parts = transform.Downcast()
    if parts.GetName() == "CompositeTransform":
        for index in range(parts.GetNumberOfTransforms()):
            composite.AddTransform(parts.GetNthTransform(index))
    else:
        composite.AddTransform(parts)
    composite.AddTransform(error)
    return composite


def compact_transform(transform: sitk.CompositeTransform, spacing_mm: float = FIELD_SPACING_MM) -> sitk.Transform:
    """A phantom's true transform (affine after displacement field) with its field kept at ``spacing_mm``.

    The phantom's field is smooth on the scale of centimetres; sampled at 2.4 mm it keeps training cases
    small (~0.8 MB instead of ~21 MB) at a displacement error far below a voxel.
    """
    field = transform.GetNthTransform(1).Downcast().GetDisplacementField()
    coarse = sitk.Resample(field, model_grid(field, spacing_mm), sitk.Transform(), sitk.sitkLinear, 0.0,
                           field.GetPixelID())
    return sitk.CompositeTransform([transform.GetNthTransform(0), sitk.DisplacementFieldTransform(coarse)])


def label_map(gland: sitk.Image, tumours: sitk.Image) -> sitk.Image:
    """uint8 map: :data:`TUMOUR` in tumours, :data:`GLAND` in the rest of the gland, 0 elsewhere."""
    tumour = sitk.Cast(tumours > 0, sitk.sitkUInt8)
    return sitk.Cast((gland > 0) | (tumour > 0), sitk.sitkUInt8) + tumour


def phantom_roles(phantom: PhantomCase, roles: Sequence[str], seed: int) -> dict[str, sitk.Image]:
    """Role -> image of ``phantom`` (float32): the TRUS, the MRI and (when asked) its synthetic ADC."""
    images = {"trus": phantom.trus, "mri": phantom.mri}
    if "adc" in roles:
        images["adc"] = synthetic_adc(phantom.mri, phantom.mri_tumours, phantom.mri_labels[0],
                                      np.random.default_rng([seed, 3]))
    return {role: sitk.Cast(images[role], sitk.sitkFloat32) for role in roles}


@dataclass
class FusionCase:
    """One phantom on its model grid (arrays in SimpleITK D/H/W order).

    Attributes:
        name: ``phantom<seed>``.
        grid: the model grid of the reference role.
        fixed: reference-space role -> normalised (D, H, W) float32 array on ``grid``.
        labels: :func:`label_map` of the reference space on ``grid``, (D, H, W) uint8.
        moving: MRI-space role -> image (resampled per sample; only on a TRUS reference).
        moving_labels: :func:`label_map` of the MRI (with ``moving``).
        transform: TRUS point -> MRI point (:func:`compact_transform`; with ``moving``).
    """

    name: str
    grid: sitk.Image
    fixed: dict[str, np.ndarray]
    labels: np.ndarray
    moving: dict[str, sitk.Image] = field(default_factory=dict)
    moving_labels: Optional[sitk.Image] = None
    transform: Optional[sitk.Transform] = None

    @property
    def centre_mm(self) -> np.ndarray:
        """Physical centre (LPS mm) of the grid: the centre of the rigid errors."""
        return np.asarray(self.grid.TransformContinuousIndexToPhysicalPoint(
            [(n - 1) / 2.0 for n in self.grid.GetSize()]))


def _on_grid(image: sitk.Image, grid: sitk.Image, transform: sitk.Transform, interpolator: int) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.Resample(image, grid, transform, interpolator, 0.0, image.GetPixelID()))


def fusion_case(seed: int, data: PhantomDataSection, roles: Sequence[str], spacing_mm: float,
                normalisation: str) -> FusionCase:
    """The :class:`FusionCase` of phantom ``seed`` for a model taking ``roles`` (first = reference).

    Raises:
        InputError: a TRUS-space role on an MRI reference (no model takes that).
    """
    reference = _space(roles[0])
    if reference == "mri" and any(_space(role) == "trus" for role in roles):
        raise InputError(f"phantom data: inputs {list(roles)} put the TRUS on an MRI grid; no model does that")
    phantom = generate_phantom(**phantom_overrides(seed, data))
    images = phantom_roles(phantom, roles, seed)
    grid = model_grid(images[roles[0]], spacing_mm)
    identity = sitk.Transform()
    fixed = {role: normalise(_on_grid(image, grid, identity, sitk.sitkLinear), normalisation)
             for role, image in images.items() if _space(role) == reference}
    space_labels = {"trus": label_map(phantom.trus_labels[0], phantom.trus_tumours),
                    "mri": label_map(phantom.mri_labels[0], phantom.mri_tumours)}
    case = FusionCase(f"phantom{seed}", grid, fixed,
                      _on_grid(space_labels[reference], grid, identity, sitk.sitkNearestNeighbor))
    if reference == "trus":
        case.moving = {role: image for role, image in images.items() if _space(role) == "mri"}
        case.moving_labels = space_labels["mri"]
        case.transform = compact_transform(phantom.transform)
    return case


class FusionSampler:
    """Draws training samples (and builds validation volumes) of :class:`FusionCase` s.

    Args:
        config: the training configuration (``data`` a phantom section).
        roles: the model's input roles in channel order.
        normalisation: intensity normalisation of every channel.
        registration_labels: also return the gland and tumour masks of both images (:data:`REGISTRATION_KEYS`).
    """

    def __init__(self, config: TrainingConfig, roles: Sequence[str], normalisation: str,
                 registration_labels: bool = False):
        self.config, self.data = config, config.data
        self.roles, self.normalisation = tuple(roles), normalisation
        self.registration_labels = registration_labels
        self.patch = tuple(int(p) for p in reversed(config.patch_size))  # i, j, k -> D, H, W
        self.label_keys = ("label", *(REGISTRATION_KEYS if registration_labels else ()))
        self.pipeline = build_augmentation(config.augmentation, config.spacing_mm, ("image",), self.label_keys)

    def case(self, seed: int) -> FusionCase:
        """The prepared case of phantom ``seed``."""
        return fusion_case(seed, self.data, self.roles, self.config.spacing_mm, self.normalisation)

    def _transform(self, case: FusionCase, rng: np.random.Generator) -> sitk.Transform:
        data = self.data
        if not (data.mri_misalignment_mm or data.mri_misalignment_deg):
            return case.transform
        error = rigid_error(rng, case.centre_mm, data.mri_misalignment_mm, data.mri_misalignment_deg)
        return misaligned(case.transform, error)

    def arrays(self, case: FusionCase, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The whole-grid arrays of ``case`` with a misalignment drawn from ``rng``: ``image`` (C, D, H, W)
        float32, ``label`` and the registration masks (1, D, H, W) uint8."""
        transform = self._transform(case, rng) if case.moving else None
        channels = [case.fixed[role] if role in case.fixed
                    else normalise(_on_grid(case.moving[role], case.grid, transform, sitk.sitkLinear),
                                   self.normalisation) for role in self.roles]
        arrays = {"image": np.stack(channels), "label": (case.labels == TUMOUR)[None].astype(np.uint8)}
        if self.registration_labels:
            moved = _on_grid(case.moving_labels, case.grid, transform, sitk.sitkNearestNeighbor)
            arrays.update({"fixed_label": case.labels >= GLAND, "fixed_tumour": case.labels == TUMOUR,
                           "moving_label": moved >= GLAND, "moving_tumour": moved == TUMOUR})
            arrays.update({key: arrays[key][None].astype(np.uint8) for key in REGISTRATION_KEYS})
        return arrays

    def _crop(self, arrays: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A ``patch``-sized crop of every array (C, D, H, W), near a tumour voxel with probability
        ``data.tumour_patch_fraction``; images padded with their minimum, masks with 0."""
        shape = arrays["label"].shape[1:]
        tumour = np.argwhere(arrays["label"][0] > 0)
        if len(tumour) and rng.random() < self.data.tumour_patch_fraction:
            jitter = rng.integers(-np.asarray(self.patch) // 4, np.asarray(self.patch) // 4 + 1)
            centre = tumour[rng.integers(len(tumour))] + jitter
        else:
            centre = np.array([rng.integers(n) for n in shape])
        start = _crop_start(centre, shape, self.patch)
        return {key: np.stack([crop(channel, start, self.patch, float(channel.min()) if key == "image" else 0)
                               for channel in value]) for key, value in arrays.items()}

    def _jitter(self, arrays: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Flips of ``data.flip_axes`` (all arrays) and per-channel intensity scale, shift and noise."""
        for axis in self.data.flip_axes:
            if rng.random() < 0.5:
                arrays = {key: np.flip(value, 3 - axis) for key, value in arrays.items()}  # ITK axis -> array axis
        image = arrays["image"]
        count = (len(image), 1, 1, 1)
        image = image * rng.uniform(*self.data.intensity_scale, size=count) + rng.uniform(-1, 1, size=count) \
            * self.data.intensity_shift
        if self.data.noise_std > 0:
            image = image + rng.normal(0.0, rng.uniform(0, self.data.noise_std), size=image.shape)
        return {**arrays, "image": image.astype(np.float32)}

    def sample(self, case: FusionCase, seed: int) -> dict[str, torch.Tensor]:
        """One augmented training sample of ``case`` drawn with ``seed``: float32 ``image``, int64 masks."""
        rng = np.random.default_rng(seed)
        arrays = self._jitter(self._crop(self.arrays(case, rng), rng), rng)
        sample = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in arrays.items()}
        return augment(self.pipeline, sample, seed, self.label_keys)

    def validation_case(self, seed: int) -> ValidationCase:
        """Phantom ``seed`` on its whole grid, misaligned by a rigid error seeded by ``seed``, not augmented."""
        arrays = self.arrays(self.case(seed), np.random.default_rng([seed, 1]))
        return ValidationCase(f"phantom{seed}", arrays["image"], arrays["label"][0])


class FusionBatches(CaseSeedBatches):
    """This process's share of each global batch of :class:`FusionSampler` samples, resumable.

    Every process draws the case and the seed of every sample of a global batch from one generator seeded
    ``[seed, 2]``, and builds only its own slice (samples depend on their seed only, not on the process).
    Batch keys: ``image`` (b, C, D, H, W) and the masks.
    """

    kind = "fusion"

    def __init__(self, sampler: FusionSampler, cases: list[FusionCase], global_batch: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        super().__init__(cases, global_batch, [int(seed), 2], rank, world_size)
        self.sampler = sampler

    def sample(self, case: FusionCase, seed: int) -> dict[str, torch.Tensor]:
        """:meth:`FusionSampler.sample`."""
        return self.sampler.sample(case, seed)
