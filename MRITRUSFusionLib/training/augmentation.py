"""Patch augmentation from the ``augmentation`` config section, as one MONAI dictionary-transform pipeline.

Spatial transforms (flips, random affine, elastic deformation) move every image and label key together:
images with linear, labels with nearest-neighbour interpolation, so every label channel -- the gland and
the landmarks of μ-RegPro/DeepReg label files -- stays on the anatomy. Intensity transforms touch images
only. Arrays are channel-first ``(C, D, H, W)`` in SimpleITK array order, so ITK axis ``a`` (0 = i) is
spatial axis ``2 - a``; lengths in mm are converted to voxels with the isotropic training spacing.

Each sample is augmented with a seed of its own (:func:`augment`), so results do not depend on which
process or loader worker draws it.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from monai.transforms import (
    Compose,
    Rand3DElasticd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from .config import AugmentationSection


def build_augmentation(section: AugmentationSection, spacing_mm: float, image_keys: Sequence[str] = ("image",),
                       label_keys: Sequence[str] = ("label",)) -> Optional[Compose]:
    """The augmentation pipeline of ``section`` for arrays at ``spacing_mm`` (mm); None when all is off."""
    if not section.enabled:
        return None
    keys = [*image_keys, *label_keys]
    modes = ["bilinear"] * len(image_keys) + ["nearest"] * len(label_keys)
    padding = ["border"] * len(image_keys) + ["zeros"] * len(label_keys)
    steps: list = [RandFlipd(keys, prob=0.5, spatial_axis=2 - axis) for axis in section.flip_axes]
    affine = section.affine
    if affine.probability > 0:
        steps.append(RandAffined(keys, prob=affine.probability, rotate_range=[math.radians(affine.rotate_deg)] * 3,
                                 scale_range=[affine.scale] * 3, translate_range=[affine.translate_mm / spacing_mm] * 3,
                                 mode=modes, padding_mode=padding))
    elastic = section.elastic
    if elastic.probability > 0:
        steps.append(Rand3DElasticd(keys, prob=elastic.probability,
                                    sigma_range=tuple(s / spacing_mm for s in elastic.sigma_mm),
                                    magnitude_range=tuple(m / spacing_mm for m in elastic.magnitude_mm),
                                    mode=modes, padding_mode=padding))
    intensity = section.intensity
    if intensity.probability > 0:
        steps += [RandScaleIntensityd(image_keys, factors=intensity.scale, prob=intensity.probability),
                  RandShiftIntensityd(image_keys, offsets=intensity.shift, prob=intensity.probability)]
        if intensity.noise_std > 0:
            steps.append(RandGaussianNoised(image_keys, prob=intensity.probability, std=intensity.noise_std))
    return Compose(steps)


def as_tensors(sample: dict, label_keys: Sequence[str] = ("label",)) -> dict:
    """``sample`` with plain tensors: float32 images, int64 labels (MONAI meta data dropped)."""
    out = {}
    for key, value in sample.items():
        if not isinstance(value, torch.Tensor) and not hasattr(value, "__array__"):
            out[key] = value
            continue
        tensor = torch.as_tensor(value)
        tensor = tensor.as_tensor() if hasattr(tensor, "as_tensor") else tensor
        out[key] = tensor.round().to(torch.int64) if key in label_keys else tensor.to(torch.float32)
    return out


def augment(pipeline: Optional[Compose], sample: dict, seed: int,
            label_keys: Sequence[str] = ("label",)) -> dict:
    """``sample`` augmented by ``pipeline`` with random state ``seed`` (unchanged when ``pipeline`` is None)."""
    if pipeline is None:
        return as_tensors(sample, label_keys)
    pipeline.set_random_state(seed=int(seed) % (2**32))
    return as_tensors(pipeline(sample), label_keys)
