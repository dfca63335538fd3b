"""Every registration method by name, as ``--method`` takes it, and the ``auto`` chain.

* ``rigid``, ``affine``, ``bspline``: classical (SimpleITK), gland-driven with both masks, image-only without;
* ``attention-reg``: learned rigid (seed 002);
* learned models of :mod:`.learned.models` (``vit-affine``, ``ecmca-lstm``, ``localnet``, ``globalnet``);
* ``auto``: the chain :data:`AUTO_CHAIN`, each stage starting from the previous one. A stage is the first
  runnable of its alternatives: ``gland`` is the classical gland-driven pre-alignment, ``gland-affine`` on the
  given masks or, without masks, ``gland-rigid`` on glands predicted by the ``gland-trus`` and ``gland-mri``
  models (:data:`GLAND_PREALIGNMENT`) followed by the population gland strain (:mod:`.gland_strain`, when
  its model is installed), which gives way to the next alternative when the predicted glands cannot be the
  same organ (:func:`implausible_glands`); learned names need their weights. Stages with no runnable
  alternative are skipped; with nothing runnable, the classical image-only B-spline.

Every method returns one transform mapping a TRUS point to an MRI point (LPS mm); learned chains return
one flat ``CompositeTransform`` (write it as ``.h5``).
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import SimpleITK as sitk

from ..errors import InputError
from ..metrics.overlap import volume_ml
from .classical import METHODS as CLASSICAL_METHODS
from .classical import register_classical
from .gland_strain import default_gland_strain
from .learned.models import REGISTRATION_MODELS, available_methods

log = logging.getLogger("MRITRUSFusionLib")
ATTENTION_REG = "attention-reg"
#: The stages of ``auto``, in order, each as alternatives in order of preference: pre-alignment (classical
#: on the glands, else learned affine), then the learned deformable refinement.
AUTO_CHAIN = (("gland", "globalnet"), ("ecmca-lstm",))
#: The ``gland`` stage's classical method by where the masks come from. Predicted glands carry segmentation
#: errors that an affine fit turns into wrong scaling and shear: on the validation cases obs070-obs079 the
#: gland-driven rigid on predicted glands had a median landmark TRE of 5.85 mm, the affine 7.06 mm, with the
#: first gland models (4.48 vs 5.83 mm with the current ones; with the true masks the affine is the better
#: one: 5.69 vs 5.96 mm on obs000-obs079).
GLAND_PREALIGNMENT = {"given": "gland-affine", "predicted": "gland-rigid"}
#: Segmentation models giving the glands of the ``gland`` stage when the user has no masks.
GLAND_MODELS = {"fixed": "gland-trus", "moving": "gland-mri"}
#: Predicted TRUS and MRI glands are the same organ: when their volumes differ by more than this factor the
#: segmentation failed (images unlike the training data) and ``auto`` pre-aligns with the stage's next
#: alternative instead. True MRI/TRUS gland volume ratios on mrus-example obs000-obs079: 0.51-1.27;
#: predicted by the first gland models: 0.55-1.43; on the synthetic phantoms, where the bundled gland models
#: fail: 2.1-2.8.
GLAND_VOLUME_RATIO_LIMIT = 2.0


def method_names() -> list[str]:
    """Every ``--method`` value this version knows (learned ones may still lack weights)."""
    return ["auto", *CLASSICAL_METHODS, ATTENTION_REG, *sorted(REGISTRATION_MODELS)]


def check_method(method: str, weights: Optional[str | os.PathLike] = None) -> None:
    """:class:`InputError` for an unknown ``method``, or ``weights`` given to one that takes none."""
    if method not in method_names():
        raise InputError(f"--method {method}: unknown method (available: {', '.join(method_names())})")
    if weights is not None and (method == "auto" or method in CLASSICAL_METHODS):
        raise InputError(f"--weights: method '{method}' takes no weights")


def returns_linear(method: str) -> bool:
    """Whether ``method`` always returns a linear transform (writable as ``.tfm``; the others need ``.h5``)."""
    spec = REGISTRATION_MODELS.get(method)
    return method in CLASSICAL_METHODS[:2] or method == ATTENTION_REG or (spec is not None and spec.kind == "affine")


def gland_models_present() -> bool:
    """Whether the bundled gland-trus and gland-mri weights are installed (auto can predict glands)."""
    from ..segmentation.models import default_weights_path

    return all(default_weights_path(name).is_file() for name in GLAND_MODELS.values())


def _runnable_chain(masks_given: bool) -> list[list[str]]:
    """Per :data:`AUTO_CHAIN` stage, its alternatives runnable here, in order of preference (``gland`` named
    by :data:`GLAND_PREALIGNMENT`)."""
    learned = set(available_methods())
    gland = GLAND_PREALIGNMENT["given" if masks_given else "predicted"]
    glands_available = masks_given or gland_models_present()
    return [[gland if name == "gland" else name for name in alternatives
             if (name == "gland" and glands_available) or name in learned] for alternatives in AUTO_CHAIN]


def auto_stages(masks_given: bool) -> list[str]:
    """The stages ``auto`` runs here: the first runnable alternative of each :data:`AUTO_CHAIN` stage, else
    ``["bspline"]``."""
    return [alternatives[0] for alternatives in _runnable_chain(masks_given) if alternatives] or ["bspline"]


def predicted_glands(fixed: sitk.Image, moving: sitk.Image, device: str = "auto") -> tuple[sitk.Image, sitk.Image]:
    """(TRUS gland, MRI gland) masks predicted by the bundled gland models (on each image's own grid)."""
    from ..segmentation.inference import segment

    fixed_mask = segment({"trus": fixed}, GLAND_MODELS["fixed"], device=device).label == 1
    moving_mask = segment({"mri": moving}, GLAND_MODELS["moving"], device=device).label == 1
    return fixed_mask, moving_mask


def implausible_glands(fixed_mask: sitk.Image, moving_mask: sitk.Image) -> Optional[str]:
    """Why predicted (TRUS, MRI) glands cannot be the same gland (an empty mask, or volumes further apart than
    :data:`GLAND_VOLUME_RATIO_LIMIT`), or None when they can."""
    fixed_ml, moving_ml = volume_ml(fixed_mask), volume_ml(moving_mask)
    if min(fixed_ml, moving_ml) == 0:
        return f"an empty predicted gland (TRUS {fixed_ml:.1f} ml, MRI {moving_ml:.1f} ml)"
    if max(fixed_ml, moving_ml) > GLAND_VOLUME_RATIO_LIMIT * min(fixed_ml, moving_ml):
        return (f"predicted gland volumes disagree (TRUS {fixed_ml:.1f} ml, MRI {moving_ml:.1f} ml, more than "
                f"{GLAND_VOLUME_RATIO_LIMIT:g}x apart)")
    return None


def gland_prealignment(fixed: sitk.Image, moving: sitk.Image, fixed_mask: Optional[sitk.Image] = None,
                       moving_mask: Optional[sitk.Image] = None, device: str = "auto") -> Optional[sitk.Transform]:
    """``auto``'s ``gland`` stage: the classical gland-driven pre-alignment of :data:`GLAND_PREALIGNMENT`, on the
    given masks (both) or on glands predicted by the gland models (neither); on predicted glands the rigid is
    followed by the population gland strain when its model is installed (:mod:`.gland_strain`). None, with a
    warning, when the predicted glands are implausible (:func:`implausible_glands`); the user's masks are always
    used."""
    source = "given" if fixed_mask is not None else "predicted"
    if fixed_mask is None:
        fixed_mask, moving_mask = predicted_glands(fixed, moving, device)
        problem = implausible_glands(fixed_mask, moving_mask)
        if problem:
            log.warning("warning: auto: %s; not pre-aligning on them", problem)
            return None
    method = GLAND_PREALIGNMENT[source].removeprefix("gland-")
    transform = register_classical(fixed, moving, method, fixed_mask, moving_mask)
    strain = default_gland_strain() if source == "predicted" else None
    return strain.after(transform, fixed_mask) if strain is not None else transform


def _run_auto(fixed: sitk.Image, moving: sitk.Image, fixed_mask: Optional[sitk.Image],
              moving_mask: Optional[sitk.Image], device: str, initial: Optional[sitk.Transform]) -> sitk.Transform:
    """Each :data:`AUTO_CHAIN` stage from the previous transform, by its first runnable alternative; a gland
    stage that declines (implausible predicted glands) gives way to the stage's next alternative. Nothing
    runnable: the classical B-spline."""
    from .learned.infer import register_learned

    chain = _runnable_chain(fixed_mask is not None)
    if not any(chain):
        return register_classical(fixed, moving, "bspline", fixed_mask, moving_mask)
    transform = initial
    for alternatives in chain:
        for position, stage in enumerate(alternatives):
            if position > 0:
                log.warning("warning: auto: pre-aligning with %s instead", stage)
            if stage in GLAND_PREALIGNMENT.values():
                result = gland_prealignment(fixed, moving, fixed_mask, moving_mask, device)  # from scratch
            else:
                result = register_learned(fixed, moving, stage, None, device, transform)
            if result is not None:
                transform = result
                break
    return transform


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
    check_method(method, weights)
    if (fixed_mask is None) != (moving_mask is None):
        raise InputError("--fixed-mask and --moving-mask: give both (gland-driven) or neither (image-only)")
    if method in CLASSICAL_METHODS:
        return register_classical(fixed, moving, method, fixed_mask, moving_mask)
    if method == ATTENTION_REG:
        from .learned.attention_reg_infer import register_attention_reg

        return register_attention_reg(fixed, moving, initial=initial, weights=weights, device=device,
                                      fixed_mask=fixed_mask, moving_mask=moving_mask)
    if method == "auto":
        return _run_auto(fixed, moving, fixed_mask, moving_mask, device, initial)
    from .learned.infer import register_learned

    return register_learned(fixed, moving, method, weights, device, initial)
