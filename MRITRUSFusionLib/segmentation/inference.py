"""Segmentation with a registered model: gather its inputs, resample, normalise, sliding window, map back.

A model's spec lists its input roles (``trus``, ``mri``, ``adc``); the first is the reference. Every input is
resampled once, directly onto an isotropic grid at the model's training spacing covering the reference (same
origin and direction), MRI-space roles through the registration transform when the reference is the TRUS
(``T`` maps a TRUS point to an MRI point, as ``sitk.Resample(mri, trus, T)`` expects). Gaussian-blended
sliding windows of the training patch size give class probabilities (optionally averaged over test-time
flips), and the target probability is resampled (linear) back onto the reference grid: every output lies
exactly on the input grid (size, origin, spacing and direction identical), in the contract's LPS mm space.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference

from ..devices import run_with_cpu_fallback
from ..errors import InputError
from ..io import Segment, default_segments
from ..progress import Stage, stage
from .lesions import LesionCandidate, check_threshold, lesion_candidates
from .models import LoadedModel, ModelSpec, load_model
from .postprocessing import DEFAULT_MIN_VOLUME_MM3, largest_component, remove_small_components
from .preprocessing import model_grid, normalise

#: Fraction of overlap between neighbouring sliding windows.
WINDOW_OVERLAP = 0.25
#: Input roles whose images live in MRI space; the others (``trus``) live in TRUS space.
MRI_SPACE_ROLES = ("mri", "adc")


def _space(role: str) -> str:
    return "MRI" if role in MRI_SPACE_ROLES else "TRUS"


def needs_transform(spec: ModelSpec) -> bool:
    """Whether ``spec`` resamples an input from one space into the other (then a transform is required)."""
    return any(_space(role) != _space(spec.inputs[0]) for role in spec.inputs)


def check_inputs(spec: ModelSpec, given: Sequence[str], has_transform: bool, strict: bool = True) -> None:
    """:class:`InputError` naming the option (``--trus``, ``--mri``, ``--adc``, ``--transform``) when the
    inputs ``given`` (role names) lack one model ``spec`` needs (its optional roles may be missing), or
    (``strict``) include one it does not use."""
    takes = " + ".join(f"[--{role}]" if role in spec.optional_inputs else f"--{role}" for role in spec.inputs)
    for role in spec.inputs:
        if role not in given and role not in spec.optional_inputs:
            raise InputError(f"--{role}: model '{spec.name}' needs it (it takes {takes})")
    if needs_transform(spec) and not has_transform:
        raise InputError(f"--transform: model '{spec.name}' resamples the MRI onto the TRUS; give the "
                         "registration transform (TRUS point -> MRI point)")
    if not strict:
        return
    for role in given:
        if role not in spec.inputs:
            raise InputError(f"--{role}: model '{spec.name}' does not use it (it takes {takes})")
    if has_transform and not needs_transform(spec):
        raise InputError(f"--transform: model '{spec.name}' works in one space and uses no transform")


def _check_image(image: sitk.Image, role: str) -> sitk.Image:
    """``image`` as float32, or :class:`InputError` unless it is a scalar 3D image."""
    if not isinstance(image, sitk.Image):
        raise InputError(f"{role} image: expected a SimpleITK image, got {type(image).__name__}")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{role} image: expected a scalar 3D image, got {image.GetDimension()}D with "
                         f"{image.GetNumberOfComponentsPerPixel()} component(s)")
    return sitk.Cast(image, sitk.sitkFloat32)


def input_volume(images: Mapping[str, sitk.Image], model: LoadedModel,
                 transform: Optional[sitk.Transform] = None) -> tuple[np.ndarray, sitk.Image]:
    """The network input (C, D, H, W float32, normalised) and the model-spacing grid it lies on.

    Args:
        images: role -> image, every role of ``model.spec.inputs`` (optional ones may be missing: the channels
            are the roles given, in the spec's order).
        model: the loaded model (its spacing and normalisation are used).
        transform: TRUS point -> MRI point; used for MRI-space roles when the reference is the TRUS.
    """
    spec = model.spec
    check_inputs(spec, list(images), transform is not None, strict=False)
    checked = {role: _check_image(images[role], role) for role in spec.inputs if role in images}
    grid = model_grid(checked[spec.inputs[0]], model.spacing_mm)
    channels = []
    for role, image in checked.items():
        moved = transform if _space(role) != _space(spec.inputs[0]) else sitk.Transform()
        resampled = sitk.Resample(image, grid, moved, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        channels.append(normalise(sitk.GetArrayViewFromImage(resampled), model.normalisation))
    return np.stack(channels), grid


def training_flip_axes(model: LoadedModel) -> tuple[int, ...]:
    """Image axes (ITK order, 0 = i) the model's training flipped (its checkpoint config), sorted."""
    config = model.metadata.get("config") or {}
    axes = set((config.get("augmentation") or {}).get("flip_axes") or [])
    axes |= set((config.get("data") or {}).get("flip_axes") or [])
    return tuple(sorted(int(a) for a in axes))


def flip_sets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` (ITK order) as tensor dims of a (B, C, D, H, W) batch, the empty set first."""
    dims = [4 - int(axis) for axis in axes]
    return [combo for n in range(len(dims) + 1) for combo in itertools.combinations(dims, n)]


def _window_count(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> int:
    """Number of sliding windows MONAI visits for an image of ``image_size`` (voxels, D/H/W)."""
    padded = [max(s, r) for s, r in zip(image_size, roi_size)]
    interval = [r if r == s else max(int(r * (1 - overlap)), 1) for s, r in zip(padded, roi_size)]
    return len(dense_patch_slices(padded, roi_size, interval))


def _predictor(network: torch.nn.Module, flips: Sequence[tuple[int, ...]], progress: Stage):
    """Window -> class probabilities: softmax of ``network``, averaged over the ``flips`` (tensor dims
    flipped before the network and back after); advances ``progress`` once per window."""
    def predict(window: torch.Tensor) -> torch.Tensor:
        total = None
        for dims in flips:
            logits = network(window.flip(dims) if dims else window).float()
            probability = torch.softmax(logits, dim=1)
            probability = probability.flip(dims) if dims else probability
            total = probability if total is None else total + probability
        progress.advance(1, f"window {progress.done + 1}/{progress.total}")
        return total / len(flips)
    return predict


def probability_array(volume: np.ndarray, model: LoadedModel, tta: bool = False) -> np.ndarray:
    """Target-class probability (float32, D/H/W) of a normalised (C, D, H, W) ``volume`` at the model's
    spacing, by Gaussian-blended sliding windows of the model's patch size (MONAI pads smaller images).

    ``tta``: average over every combination of the flips the model was trained with. If CUDA runs out of
    memory and ``model.cpu_fallback`` allows it, the model moves to the CPU (with a warning) and runs there.

    Raises:
        InputError: ``tta`` for a model trained without flips; CUDA out of memory without the fallback.
    """
    flips = [()]
    if tta:
        axes = training_flip_axes(model)
        if not axes:
            raise InputError(f"--tta: model '{model.spec.name}' ({model.path}) was trained without flips; "
                             "flipped inputs would be images it never saw")
        flips = flip_sets(axes)
    roi = tuple(int(p) for p in reversed(model.patch_size))  # i, j, k -> D, H, W
    windows = _window_count(volume.shape[1:], roi, WINDOW_OVERLAP)

    def run(device: torch.device) -> np.ndarray:
        if device != model.device:  # the CPU rerun after CUDA ran out of memory: the model stays there
            model.network, model.device = model.network.to(device), device
        tensor = torch.from_numpy(np.ascontiguousarray(volume))[None].to(device)
        with torch.inference_mode(), stage("segment", windows) as progress:
            probabilities = sliding_window_inference(tensor, roi, 1, _predictor(model.network, flips, progress),
                                                     overlap=WINDOW_OVERLAP, mode="gaussian",
                                                     cval=float(volume.min()))
        return probabilities[0, model.spec.tumour_channel].cpu().numpy().astype(np.float32)
    return run_with_cpu_fallback(run, model.device, f"segmentation ({model.spec.name})", model.cpu_fallback)


def target_probability(images: Mapping[str, sitk.Image], model: LoadedModel,
                       transform: Optional[sitk.Transform] = None, tta: bool = False) -> sitk.Image:
    """Probability (float32, 0..1) of the model's target (tumour or gland) on the grid of the reference input.

    Args:
        images: role -> image (``trus``, ``mri``, ``adc``), the roles of ``model.spec.inputs`` (optional ones
            may be left out).
        model: a loaded model (:func:`.models.load_model`).
        transform: TRUS point -> MRI point, for models that bring MRI-space inputs onto the TRUS.
        tta: average over the flips the model was trained with (:func:`probability_array`).
    """
    volume, grid = input_volume(images, model, transform)
    probability = sitk.GetImageFromArray(probability_array(volume, model, tta))
    probability.CopyInformation(grid)
    reference = images[model.spec.inputs[0]]
    return sitk.Resample(probability, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


@dataclass
class Segmentation:
    """What :func:`segment` returns, every image on the grid of the reference input.

    Attributes:
        label: uint16 label map in the :func:`MRITRUSFusionLib.io.default_segments` convention: 1 = gland,
            ``k + 1`` = lesion candidate ``k``.
        probability: float32 target probability (0..1).
        segments: the named, coloured segments present in ``label`` (for ``.seg.nrrd``).
        lesions: lesion candidates (tumour models; empty for gland models).
    """

    label: sitk.Image
    probability: sitk.Image
    segments: list[Segment]
    lesions: list[LesionCandidate] = field(default_factory=list)


def label_from_probability(probability: sitk.Image, target: str, threshold: float = 0.5,
                           min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3) -> Segmentation:
    """The :class:`Segmentation` of a target ``probability`` map (``target``: ``gland`` or ``tumour``).

    Gland: the largest connected component of ``probability >= threshold`` (label 1). Tumour: lesion
    candidates of at least ``min_volume_mm3`` (mm³), candidate ``k`` labelled ``k + 1``.
    """
    if target == "gland":
        label = sitk.Cast(largest_component(probability >= check_threshold(threshold)), sitk.sitkUInt16)
        return Segmentation(label, probability, default_segments(0))
    components, lesions = lesion_candidates(probability, threshold, min_volume_mm3)
    label = sitk.Mask(components + 1, components > 0)
    return Segmentation(label, probability, default_segments(len(lesions))[1:], lesions)


def segment(images: Mapping[str, sitk.Image], model_name: str = "trus-unet",
            weights: Optional[str | os.PathLike] = None, device: str = "auto",
            transform: Optional[sitk.Transform] = None, threshold: float = 0.5,
            min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3, tta: bool = False,
            model: Optional[LoadedModel] = None) -> Segmentation:
    """Segment with model ``model_name`` the ``images`` it takes (role -> image, e.g. ``{"mri": t2w}``).

    Args:
        images: the model's input roles (``model.spec.inputs``): ``trus``, ``mri``, ``adc``.
        model_name: registry name (``trus-unet``, ``gland-trus``, ``gland-mri``, ...).
        weights: checkpoint file; default the bundled or ``$MRITRUS_FUSION_MODELS`` weights.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        transform: TRUS point -> MRI point, for models combining TRUS and MRI-space inputs.
        threshold: probability (0..1) at or above which a voxel is target; applied on the reference grid.
        min_volume_mm3: smallest kept lesion candidate (mm³; tumour models).
        tta: test-time flip augmentation over the flips of the model's training.
        model: an already loaded model (then ``model_name``, ``weights``, ``device`` are ignored).

    Raises:
        InputError: missing or extra inputs or transform, unusable image, unknown model or device, missing
            or incompatible weights.
    """
    model = model or load_model(model_name, weights, device)
    probability = target_probability(images, model, transform, tta)
    return label_from_probability(probability, model.spec.target, threshold, min_volume_mm3)


def tumour_probability(trus: sitk.Image, model_name: str = "trus-unet",
                       weights: Optional[str | os.PathLike] = None, device: str = "auto",
                       model: Optional[LoadedModel] = None) -> sitk.Image:
    """Tumour probability (float32, 0..1) of every voxel of ``trus`` by a TRUS-only model, on its grid."""
    model = model or load_model(model_name, weights, device)
    return target_probability({"trus": trus}, model)


def probability_to_label(probability: sitk.Image, threshold: float = 0.5,
                         min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3) -> sitk.Image:
    """uint8 label (1 where ``probability >= threshold``, 0 elsewhere) on the probability's grid, without
    connected components smaller than ``min_volume_mm3`` (mm³; 0 keeps all)."""
    return remove_small_components(probability >= check_threshold(threshold), min_volume_mm3)


def segment_trus(trus: sitk.Image, model_name: str = "trus-unet", weights: Optional[str | os.PathLike] = None,
                 device: str = "auto", threshold: float = 0.5, min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3,
                 return_probability: bool = False, model: Optional[LoadedModel] = None
                 ) -> sitk.Image | tuple[sitk.Image, sitk.Image]:
    """Binary tumour segmentation of a TRUS volume: uint8 label (0 background, 1 tumour) on its grid.

    Args:
        trus: 3D TRUS volume (the fixed image), any spacing and direction (LPS mm).
        model_name: registry name of a TRUS-only model, e.g. ``trus-unet``.
        weights: checkpoint file; default the bundled or ``$MRITRUS_FUSION_MODELS`` weights.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        threshold: tumour probability (0..1) at or above which a voxel is tumour, on the input grid.
        min_volume_mm3: connected tumour components smaller than this (mm³) are dropped; 0 keeps all.
        return_probability: also return the float32 probability map (same grid).
        model: an already loaded model (skips loading; ``model_name``, ``weights``, ``device`` ignored).

    Returns:
        The label image, or ``(label, probability)`` with ``return_probability``.
    """
    probability = tumour_probability(trus, model_name, weights, device, model=model)
    label = probability_to_label(probability, threshold, min_volume_mm3)
    return (label, probability) if return_probability else label
