"""Run a learned registration model on one TRUS/MRI pair, or a batch of pairs, in physical space.

The pair is put on the model's registration grid (:mod:`.grid`; the MRI through the ``initial`` transform),
the network predicts a DDF there, and the result becomes an ITK transform mapping a TRUS point to an MRI
point (LPS mm): an exact ``AffineTransform`` for affine models (least-squares fit of the predicted field,
exact for an affine field), a displacement field resampled onto the full TRUS grid for deformable ones.
The returned transform is ``initial`` followed by the new stage, flattened into one ``CompositeTransform``
(write it as ``.h5``). Inference runs under ``torch.inference_mode`` and, on CUDA, with mixed precision.
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from ...devices import run_with_cpu_fallback
from ...errors import InputError
from ...memory_format import as_channels_last
from .grid import GridPair, pair_on_grid
from .models import LoadedRegistration, load_registration_model
from .spatial import ddf_to_displacement_mm, ddf_to_transform, physical_grid


def _autocast(device: torch.device):
    """float16 autocast on CUDA, nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def predict_ddfs(model: LoadedRegistration, pairs: Sequence[GridPair]) -> torch.Tensor:
    """The network's DDFs (B, 3, D, H, W), voxels of each pair's grid, float32 on CPU, one batch for all.

    If CUDA runs out of memory and ``model.cpu_fallback`` allows it, the model moves to the CPU (with a
    warning) and runs there; otherwise :class:`InputError`.
    """
    def run(device: torch.device) -> torch.Tensor:
        if device != model.device:  # the CPU rerun after CUDA ran out of memory: the model stays there
            model.network, model.device = model.network.to(device), device
        fixed = as_channels_last(torch.cat([pair.fixed for pair in pairs]).to(device))
        moving = as_channels_last(torch.cat([pair.moving for pair in pairs]).to(device))
        with torch.inference_mode(), _autocast(device):
            ddf = model.network(fixed, moving)["ddf"]
        return ddf.float().cpu()
    return run_with_cpu_fallback(run, model.device, f"registration ({model.spec.name})", model.cpu_fallback)


def affine_from_ddf(ddf: torch.Tensor, grid: sitk.Image) -> sitk.AffineTransform:
    """The affine map ``x -> A x + b`` (LPS mm) closest in least squares to ``x -> x + u(x)`` over ``grid``."""
    displacement = ddf_to_displacement_mm(ddf.to(torch.float64), grid)[0].reshape(3, -1).T.numpy()
    points = physical_grid(grid).reshape(-1, 3).numpy()
    design = np.hstack([points, np.ones((len(points), 1))])
    solution, *_ = np.linalg.lstsq(design, points + displacement, rcond=None)  # (4, 3)
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(solution[:3].T.ravel().tolist())
    affine.SetTranslation(solution[3].tolist())
    return affine


def chain(*transforms: Optional[sitk.Transform]) -> sitk.Transform:
    """``T0(T1(...(x)))`` for ``chain(T0, T1, ...)`` (None skipped): one flat ``CompositeTransform``, or the
    transform itself when only one is left."""
    composite = sitk.CompositeTransform(3)
    for transform in transforms:
        if transform is None:
            continue
        if isinstance(transform, sitk.CompositeTransform) or transform.GetName() == "CompositeTransform":
            inner = sitk.CompositeTransform(transform)
            for index in range(inner.GetNumberOfTransforms()):
                composite.AddTransform(inner.GetNthTransform(index))
        else:
            composite.AddTransform(transform)
    return composite.GetNthTransform(0) if composite.GetNumberOfTransforms() == 1 else composite


def stage_transform(model: LoadedRegistration, ddf: torch.Tensor, pair: GridPair, fixed: sitk.Image) -> sitk.Transform:
    """The transform of one predicted DDF (1, 3, D, H, W): affine for affine models, else a field on ``fixed``'s grid."""
    if model.spec.kind == "affine":
        return affine_from_ddf(ddf, pair.grid)
    return ddf_to_transform(ddf, pair.grid, output_grid=fixed, extrapolate=True)


def register_learned(fixed: sitk.Image, moving: sitk.Image, method: str, weights: Optional[str | os.PathLike] = None,
                     device: str = "auto", initial: Optional[sitk.Transform] = None) -> sitk.Transform:
    """Register MRI ``moving`` onto TRUS ``fixed`` with learned model ``method`` after ``initial``.

    Returns:
        ``initial`` then the model's stage (:func:`chain`; TRUS point → MRI point, LPS mm).
    """
    model = load_registration_model(method, weights, device)
    return register_batch(model, [(fixed, moving, initial)])[0]


def register_batch(model: LoadedRegistration,
                   cases: Sequence[tuple[sitk.Image, sitk.Image, Optional[sitk.Transform]]]) -> list[sitk.Transform]:
    """:func:`register_learned` for several ``(fixed, moving, initial)`` cases in one network batch."""
    if not cases:
        raise InputError("register_batch: no cases given")
    size = tuple(int(s) for s in model.grid_size)
    pairs = [pair_on_grid(fixed, moving, size, model.spacing_mm, initial) for fixed, moving, initial in cases]
    ddfs = predict_ddfs(model, pairs)
    return [chain(initial, stage_transform(model, ddfs[index:index + 1], pair, fixed))
            for index, (pair, (fixed, _, initial)) in enumerate(zip(pairs, cases))]
