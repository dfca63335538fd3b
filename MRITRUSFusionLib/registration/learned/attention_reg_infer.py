"""Attention-Reg inference (seed 002) on SimpleITK images in physical space.

:func:`register_attention_reg` returns a rigid transform mapping a TRUS (fixed) point to an MRI (moving)
point (the project's contract). Each stage builds the network grid (checkpoint ``patch_size`` voxels at
``spacing_mm``, the TRUS image's direction) centred on the TRUS image centre — or on the TRUS gland
centroid when ``fixed_mask`` is given — samples the TRUS on it and the MRI through the current estimate
``T_cur``, predicts the correction ``Δ`` (rigid parameters about the grid centre) and composes
``T_new = T_cur ∘ Δ``. The paper's multi-stage refinement is this loop run ``stages`` times (with one
trained network reused at every stage, unless the checkpoint holds one network per stage).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk
import torch

from ...devices import fallback_allowed, run_with_cpu_fallback
from ...errors import InputError
from ...segmentation.checkpoints import read_checkpoint
from ...segmentation.models import locate_weights, resolve_device
from .attention_reg import AttentionReg
from .attention_reg_data import (apply_correction, image_centre_mm, normalise_patch, patch_grid,
                                 resample_to_grid)

#: Registry name stored in the checkpoint's ``model`` key.
MODEL_NAME = "attention-reg"
#: Text naming the expected architecture in error messages.
EXPECTED = ("an 'attention-reg' checkpoint (AttentionReg of seed 002: keys model='attention-reg', arguments, "
            "state_dict, patch_size, spacing_mm; e.g. Resources/Models/attention-reg.pt, trained by "
            "`mritrus-fusion train` with MRITRUSFusionLib/configs/attention-reg.yaml then attention-reg-stage2.yaml)")
DEFAULT_WEIGHTS_NAME = "attention-reg.pt"


def default_weights_path() -> Path:
    """The bundled weights ``attention-reg.pt``, found like the other models' (:func:`locate_weights`)."""
    return locate_weights(DEFAULT_WEIGHTS_NAME)


def load_attention_reg(weights: Union[str, os.PathLike, None] = None, device: Union[str, torch.device] = "cpu"):
    """``(networks, checkpoint)``: the stage networks (eval mode, on ``device``) of an Attention-Reg checkpoint.

    Raises:
        InputError: file missing/unreadable, another architecture, or weights that do not fit.
    """
    path = Path(weights) if weights is not None else default_weights_path()
    checkpoint = read_checkpoint(path, EXPECTED)
    if checkpoint.get("model") != MODEL_NAME:
        raise InputError(f"weights {path}: a '{checkpoint.get('model')}' checkpoint; expected {EXPECTED}")
    states = checkpoint.get("stage_state_dicts") or [checkpoint["state_dict"]]
    networks = []
    for state in states:
        try:
            network = AttentionReg(**checkpoint["arguments"])
            network.load_state_dict(state)
        except (TypeError, RuntimeError, ValueError) as error:
            reason = str(error).strip().splitlines()[0]
            raise InputError(f"weights {path}: incompatible with AttentionReg({checkpoint['arguments']}) "
                             f"({reason}); expected {EXPECTED}") from error
        networks.append(network.to(device).eval())
    return networks, checkpoint


def _mask_centroid(mask: sitk.Image) -> np.ndarray:
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(mask > 0, sitk.sitkUInt8))
    if not stats.HasLabel(1):
        raise InputError("fixed_mask: empty, no gland centroid to centre the network patch on")
    return np.asarray(stats.GetCentroid(1))


def _as_linear(transform: Optional[sitk.Transform]) -> sitk.Transform:
    if transform is None:
        return sitk.AffineTransform(3)
    if transform.GetDimension() != 3:
        raise InputError("initial: expected a 3D transform")
    return transform


def predict_correction(network: AttentionReg, trus: sitk.Image, mri: sitk.Image, current: sitk.Transform,
                       centre_mm: Sequence[float], patch_size: Sequence[int], spacing_mm: float,
                       device: torch.device, fixed_mask: Optional[sitk.Image] = None,
                       moving_mask: Optional[sitk.Image] = None) -> np.ndarray:
    """Rigid parameters ``Δ`` (6,) about ``centre_mm`` predicted for the current estimate ``current``."""
    grid = patch_grid(trus, centre_mm, patch_size, spacing_mm)
    trus_patch = torch.from_numpy(normalise_patch(resample_to_grid(trus, grid)))[None, None]
    mri_patch = torch.from_numpy(normalise_patch(resample_to_grid(mri, grid, current)))[None, None]
    masks = {}
    if network.use_masks:
        if fixed_mask is None or moving_mask is None:
            raise InputError("this attention-reg checkpoint takes gland masks: give fixed_mask and moving_mask")
        nearest = sitk.sitkNearestNeighbor
        trus_mask = resample_to_grid(fixed_mask, grid, interpolator=nearest) > 0
        mri_mask = resample_to_grid(moving_mask, grid, current, nearest) > 0
        masks["trus_mask"] = torch.from_numpy(trus_mask.astype(np.float32))[None, None]
        masks["mri_mask"] = torch.from_numpy(mri_mask.astype(np.float32))[None, None]
        masks = {k: v.to(device) for k, v in masks.items()}
    with torch.no_grad():
        params = network(trus_patch.to(device), mri_patch.to(device), **masks)
    return params[0].double().cpu().numpy()


def refine(networks: Sequence[AttentionReg], trus: sitk.Image, mri: sitk.Image, initial: sitk.Transform,
           centre_mm: Sequence[float], patch_size: Sequence[int], spacing_mm: float, stages: int,
           device: torch.device, fixed_mask: Optional[sitk.Image] = None,
           moving_mask: Optional[sitk.Image] = None) -> sitk.Transform:
    """``stages`` rounds of ``T ← T ∘ Δ``; stage ``n`` uses ``networks[min(n, len - 1)]``."""
    current = initial
    for stage in range(int(stages)):
        network = networks[min(stage, len(networks) - 1)]
        params = predict_correction(network, trus, mri, current, centre_mm, patch_size, spacing_mm, device,
                                    fixed_mask, moving_mask)
        current = apply_correction(current, params, centre_mm)
    return current


def register_attention_reg(fixed: sitk.Image, moving: sitk.Image, initial: Optional[sitk.Transform] = None,
                           weights: Union[str, os.PathLike, None] = None, device: Union[str, torch.device] = "auto",
                           stages: int = 2, fixed_mask: Optional[sitk.Image] = None,
                           moving_mask: Optional[sitk.Image] = None,
                           allow_cpu_fallback: Optional[bool] = None) -> sitk.Transform:
    """Rigid MRI→TRUS registration with Attention-Reg (seed 002).

    Args:
        fixed: TRUS image (3D).
        moving: MRI image (3D).
        initial: starting estimate (TRUS point → MRI point); identity when ``None``.
        weights: checkpoint path; default ``Resources/Models/attention-reg.pt``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        stages: refinement rounds (the paper uses 2); 0 returns the initial estimate.
        fixed_mask: TRUS gland mask: the network patch is centred on its centroid (and fed to a
            mask-input checkpoint).
        moving_mask: MRI gland mask (only for a mask-input checkpoint).
        allow_cpu_fallback: when CUDA runs out of memory, warn and rerun on the CPU; default: only for
            ``device="auto"`` (see :mod:`MRITRUSFusionLib.devices`).

    Returns:
        A transform mapping a TRUS point to an MRI point: an ``AffineTransform`` (rigid matrix) when
        ``initial`` is linear, else a ``CompositeTransform`` of ``initial`` then the rigid corrections.

    Raises:
        InputError: missing or incompatible weights (naming the expected architecture), bad images, CUDA out
            of memory without the CPU fallback.
    """
    for name, image in (("fixed", fixed), ("moving", moving)):
        if not isinstance(image, sitk.Image) or image.GetDimension() != 3:
            raise InputError(f"{name}: expected a 3D SimpleITK image")
    if stages < 0:
        raise InputError(f"stages: expected >= 0, got {stages}")
    torch_device = resolve_device(device)
    centre = _mask_centroid(fixed_mask) if fixed_mask is not None else image_centre_mm(fixed)
    current = _as_linear(initial)
    if current.IsLinear():
        from ..linear import linear_matrix, matrix_to_affine
        current = matrix_to_affine(linear_matrix(current))

    def run(on: torch.device) -> sitk.Transform:
        networks, checkpoint = load_attention_reg(weights, on)
        return refine(networks, fixed, moving, current, centre, checkpoint["patch_size"],
                      float(checkpoint["spacing_mm"]), stages, on, fixed_mask, moving_mask)
    return run_with_cpu_fallback(run, torch_device, "attention-reg registration",
                                 fallback_allowed(device, allow_cpu_fallback))
