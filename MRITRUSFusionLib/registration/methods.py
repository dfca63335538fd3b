"""Every registration method by name, as ``--method`` takes it, and the ``auto`` chain.

* ``rigid``, ``affine``, ``bspline``: classical (SimpleITK), gland-driven with both masks, image-only without;
* ``attention-reg``: learned rigid (seed 002);
* learned models of :mod:`.learned.models` (``vit-affine``, ``ecmca-lstm``, ``localnet``, ``globalnet``);
* ``auto``: with gland masks, the classical gland-driven B-spline; without, the learned chain
  :data:`AUTO_CHAIN` (each stage starting from the previous one, stages without weights skipped), or the
  classical image-only B-spline when no learned weights are present.

Every method returns one transform mapping a TRUS point to an MRI point (LPS mm); learned chains return
one flat ``CompositeTransform`` (write it as ``.h5``).
"""

from __future__ import annotations

import os
from typing import Optional

import SimpleITK as sitk

from ..errors import InputError
from .classical import METHODS as CLASSICAL_METHODS
from .classical import register_classical
from .learned.models import REGISTRATION_MODELS, available_methods

ATTENTION_REG = "attention-reg"
#: The learned stages of ``auto`` without masks, in order (pre-alignment, affine, deformable).
AUTO_CHAIN = ("globalnet", "vit-affine", "ecmca-lstm")


def method_names() -> list[str]:
    """Every ``--method`` value this version knows (learned ones may still lack weights)."""
    return ["auto", *CLASSICAL_METHODS, ATTENTION_REG, *sorted(REGISTRATION_MODELS)]


def auto_stages(masks_given: bool) -> list[str]:
    """What ``auto`` runs: ``["bspline"]`` with masks, else the learned stages with weights (or ``["bspline"]``)."""
    if masks_given:
        return ["bspline"]
    learned = [name for name in AUTO_CHAIN if name in available_methods()]
    return learned or ["bspline"]


def register(fixed: sitk.Image, moving: sitk.Image, method: str = "auto", fixed_mask: Optional[sitk.Image] = None,
             moving_mask: Optional[sitk.Image] = None, weights: Optional[str | os.PathLike] = None,
             device: str = "auto", initial: Optional[sitk.Transform] = None) -> sitk.Transform:
    """Register MRI ``moving`` onto TRUS ``fixed`` with ``method`` (see the module docstring).

    Args:
        fixed_mask, moving_mask: gland masks (both or neither); classical methods become gland-driven, the
            Attention-Reg patch is centred on the TRUS gland, learned models ignore them.
        weights: checkpoint of a learned method (not for classical methods or ``auto``).
        device: ``auto``, ``cpu`` or ``cuda`` for learned methods.
        initial: starting transform of a learned method (TRUS point → MRI point).

    Raises:
        InputError: unknown method, weights given where none are taken, one mask without the other.
    """
    if method not in method_names():
        raise InputError(f"--method {method}: unknown method (available: {', '.join(method_names())})")
    if (fixed_mask is None) != (moving_mask is None):
        raise InputError("--fixed-mask and --moving-mask: give both (gland-driven) or neither (image-only)")
    if weights is not None and (method == "auto" or method in CLASSICAL_METHODS):
        raise InputError(f"--weights: method '{method}' takes no weights")
    if method in CLASSICAL_METHODS:
        return register_classical(fixed, moving, method, fixed_mask, moving_mask)
    if method == ATTENTION_REG:
        from .learned.attention_reg_infer import register_attention_reg

        return register_attention_reg(fixed, moving, initial=initial, weights=weights, device=device,
                                      fixed_mask=fixed_mask, moving_mask=moving_mask)
    from .learned.infer import register_learned

    if method != "auto":
        return register_learned(fixed, moving, method, weights, device, initial)
    transform = initial
    for stage in auto_stages(fixed_mask is not None):
        if stage in CLASSICAL_METHODS:
            return register_classical(fixed, moving, stage, fixed_mask, moving_mask)
        transform = register_learned(fixed, moving, stage, None, device, transform)
    return transform
