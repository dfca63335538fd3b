"""TRUS tumour segmentation with a registered model: resample, normalise, sliding window, map back.

Every output lies exactly on the input TRUS grid (size, origin, spacing and direction identical), in the
contract's LPS mm physical space; the network runs at the model's own isotropic spacing.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference

from ..errors import InputError
from ..progress import Stage, stage
from .models import LoadedModel, load_model
from .postprocessing import DEFAULT_MIN_VOLUME_MM3, remove_small_components
from .preprocessing import normalise, resample_onto, to_model_spacing

#: Fraction of overlap between neighbouring sliding windows.
WINDOW_OVERLAP = 0.25


def _check_trus(trus: sitk.Image) -> sitk.Image:
    """``trus`` as float32, or :class:`InputError` unless it is a scalar 3D image."""
    if not isinstance(trus, sitk.Image):
        raise InputError(f"TRUS image: expected a SimpleITK image, got {type(trus).__name__}")
    if trus.GetDimension() != 3 or trus.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"TRUS image: expected a scalar 3D image, got {trus.GetDimension()}D with "
                         f"{trus.GetNumberOfComponentsPerPixel()} component(s)")
    return sitk.Cast(trus, sitk.sitkFloat32)


def _window_count(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> int:
    """Number of sliding windows MONAI visits for an image of ``image_size`` (voxels, D/H/W)."""
    padded = [max(s, r) for s, r in zip(image_size, roi_size)]
    interval = [r if r == s else max(int(r * (1 - overlap)), 1) for s, r in zip(padded, roi_size)]
    return len(dense_patch_slices(padded, roi_size, interval))


def _predictor(network: torch.nn.Module, progress: Stage):
    """``network`` wrapped to advance ``progress`` once per window."""
    def predict(window: torch.Tensor) -> torch.Tensor:
        logits = network(window)
        progress.advance(1, f"window {progress.done + 1}/{progress.total}")
        return logits
    return predict


def _probability_array(volume: np.ndarray, model: LoadedModel) -> np.ndarray:
    """Tumour probability (float32, same D/H/W shape) of a normalised ``volume`` at the model's spacing."""
    roi = tuple(int(p) for p in reversed(model.patch_size))  # i, j, k -> D, H, W
    tensor = torch.from_numpy(np.ascontiguousarray(volume))[None, None].to(model.device)
    with torch.inference_mode(), stage("segment", _window_count(volume.shape, roi, WINDOW_OVERLAP)) as s:
        logits = sliding_window_inference(tensor, roi, 1, _predictor(model.network, s), overlap=WINDOW_OVERLAP,
                                          mode="gaussian", cval=float(volume.min()))
        probability = torch.softmax(logits.float(), dim=1)[0, model.spec.tumour_channel]
    return probability.cpu().numpy().astype(np.float32)


def tumour_probability(trus: sitk.Image, model_name: str = "trus-unet",
                       weights: Optional[str | os.PathLike] = None, device: str = "auto",
                       model: Optional[LoadedModel] = None) -> sitk.Image:
    """Tumour probability (float32, 0..1) of every voxel of ``trus``, on the grid of ``trus``.

    Args:
        trus: 3D TRUS volume, any spacing and direction (LPS mm).
        model_name: registry name (see :data:`.models.MODELS`).
        weights: checkpoint file; default :func:`.models.default_weights_path`.
        device: ``auto``, ``cpu`` or ``cuda``.
        model: an already loaded model (then ``model_name``, ``weights`` and ``device`` are ignored).

    The volume is resampled (linear) to the model's isotropic spacing over the same physical extent,
    normalised, segmented by Gaussian-blended sliding windows, and the probability is resampled (linear)
    back onto the input grid.
    """
    trus = _check_trus(trus)
    model = model or load_model(model_name, weights, device)
    resampled = to_model_spacing(trus, model.spacing_mm)
    volume = normalise(sitk.GetArrayViewFromImage(resampled), model.normalisation)
    probability = sitk.GetImageFromArray(_probability_array(volume, model))
    probability.CopyInformation(resampled)
    return resample_onto(probability, trus, sitk.sitkLinear, 0.0)


def probability_to_label(probability: sitk.Image, threshold: float = 0.5,
                         min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3) -> sitk.Image:
    """uint8 label (1 where ``probability >= threshold``, 0 elsewhere) on the probability's grid, without
    connected components smaller than ``min_volume_mm3`` (mm³; 0 keeps all)."""
    if not 0.0 < threshold < 1.0 or math.isnan(threshold):
        raise InputError(f"threshold {threshold}: must lie strictly between 0 and 1")
    return remove_small_components(probability >= float(threshold), min_volume_mm3)


def segment_trus(trus: sitk.Image, model_name: str = "trus-unet", weights: Optional[str | os.PathLike] = None,
                 device: str = "auto", threshold: float = 0.5, min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3,
                 return_probability: bool = False, model: Optional[LoadedModel] = None
                 ) -> sitk.Image | tuple[sitk.Image, sitk.Image]:
    """Tumour segmentation of a TRUS volume: uint8 label (0 background, 1 tumour) on the grid of ``trus``.

    Args:
        trus: 3D TRUS volume (the fixed image), any spacing and direction (LPS mm).
        model_name: registry name, e.g. ``trus-unet``.
        weights: checkpoint file; default the bundled or ``$MRITRUS_FUSION_MODELS`` weights.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        threshold: tumour probability (0..1) at or above which a voxel is tumour; thresholding happens on the
            input grid, after the probability is resampled onto it.
        min_volume_mm3: connected tumour components smaller than this (mm³) are dropped; 0 keeps all.
        return_probability: also return the float32 probability map (same grid).
        model: an already loaded model (skips loading; ``model_name``, ``weights``, ``device`` ignored).

    Returns:
        The label image, or ``(label, probability)`` with ``return_probability``.

    Raises:
        InputError: unusable image, unknown model or device, missing or incompatible weights.
    """
    probability = tumour_probability(trus, model_name, weights, device, model=model)
    label = probability_to_label(probability, threshold, min_volume_mm3)
    return (label, probability) if return_probability else label
