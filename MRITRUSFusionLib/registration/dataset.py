"""Register every case of a dataset (DeepReg paired, μ-RegPro or CSV manifest; :func:`..io.open_dataset`).

Each case's TRUS (``fixed_image``) is the fixed image and its MRI (``moving_image``) the moving one; the result
is one transform file per case, ``OUT/CASE.tfm`` for methods that return a linear transform and ``OUT/CASE.h5``
otherwise (TRUS point → MRI point, LPS mm): the folder ``evaluate registration --predictions`` reads.
Optionally ``WARPED/CASE.nii.gz``: the MRI resampled onto the TRUS grid.

The learned models of :mod:`.learned.models` (``vit-affine``, ``ecmca-lstm``, ``localnet``, ``globalnet``) are
loaded once and run ``batch_size`` cases per network batch; the other methods (classical, ``attention-reg``,
``auto``) register case by case. A case that fails (unreadable file, unusable image) is reported and the others
go on.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import SimpleITK as sitk

from ..errors import FusionError, InputError, OutputExistsError
from ..io import Case, read_label_channels, read_volume, write_transform, write_volume
from ..progress import stage
from .learned.models import REGISTRATION_MODELS
from .methods import check_method, register, returns_linear
from .warp import warp_image

log = logging.getLogger("MRITRUSFusionLib")
#: Cases per network batch of a learned model unless the caller says otherwise.
DEFAULT_BATCH_SIZE = 4
#: Failures of one case that do not stop the others: the library's own, and SimpleITK's (RuntimeError).
CASE_FAILURES = (FusionError, RuntimeError, OSError)


@dataclass
class DatasetRegistration:
    """What :func:`register_dataset` did: case -> transform file written, case -> why it failed (one line)."""

    written: dict[str, Path] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class _Pair:
    """One case read: TRUS, MRI and (gland-driven) their gland masks."""

    name: str
    fixed: sitk.Image
    moving: sitk.Image
    fixed_mask: Optional[sitk.Image] = None
    moving_mask: Optional[sitk.Image] = None


def transform_path(folder: str | os.PathLike, case: str, method: str) -> Path:
    """``folder/CASE.tfm`` for a ``method`` returning a linear transform, else ``folder/CASE.h5``."""
    return Path(folder) / f"{case}{'.tfm' if returns_linear(method) else '.h5'}"


def _read_pair(case: Case, gland_masks: bool) -> _Pair:
    """The case's images and, with ``gland_masks``, channel 0 (the gland) of its TRUS and MRI label files."""
    fixed = read_volume(case.fixed_image, name=f"{case.name} TRUS")
    moving = read_volume(case.moving_image, name=f"{case.name} MRI")
    if not gland_masks:
        return _Pair(case.name, fixed, moving)
    if case.fixed_label is None or case.moving_label is None:
        raise InputError(f"case {case.name}: gland-driven registration needs both label files (TRUS and MRI)")
    return _Pair(case.name, fixed, moving, read_label_channels(case.fixed_label, name=f"{case.name} TRUS label")[0],
                 read_label_channels(case.moving_label, name=f"{case.name} MRI label")[0])


def _check_new(cases: Sequence[Case], method: str, out: Path, warped_out: Optional[Path], overwrite: bool) -> None:
    """Fail before any work when an output of any case exists and ``overwrite`` is off."""
    if overwrite:
        return
    targets = [transform_path(out, case.name, method) for case in cases]
    targets += [warped_out / f"{case.name}.nii.gz" for case in cases] if warped_out else []
    existing = [str(path) for path in targets if path.exists()]
    if existing:
        raise OutputExistsError(f"{existing[0]}: output exists ({len(existing)} in all; pass --overwrite to "
                                "replace them)")


def _registered(pairs: list[_Pair], method: str, weights, device: str, state: dict) -> dict:
    """Case -> transform for ``pairs``: one network batch for a learned model (loaded once, kept in ``state``),
    otherwise :func:`.methods.register` per case. A failed case maps to its one-line reason (str)."""
    if method in REGISTRATION_MODELS:
        from .learned.infer import register_batch
        from .learned.models import load_registration_model

        if "model" not in state:
            state["model"] = load_registration_model(method, weights, device)
        try:
            transforms = register_batch(state["model"], [(p.fixed, p.moving, None) for p in pairs])
            return {pair.name: transform for pair, transform in zip(pairs, transforms)}
        except CASE_FAILURES as error:
            if len(pairs) > 1:  # find the failing case(s): case by case below
                log.warning("warning: the batch of %s failed (%s); registering its cases one by one",
                            ", ".join(p.name for p in pairs), error)
    results = {}
    for pair in pairs:
        try:
            results[pair.name] = register(pair.fixed, pair.moving, method, pair.fixed_mask, pair.moving_mask,
                                          weights=weights, device=device)
        except CASE_FAILURES as error:
            results[pair.name] = str(error)
    return results


def _write(pair: _Pair, transform: sitk.Transform, method: str, out: Path, warped_out: Optional[Path]) -> Path:
    """Write the case's transform (and warped MRI); return the transform file."""
    if warped_out:
        write_volume(warp_image(pair.moving, pair.fixed, transform), warped_out / f"{pair.name}.nii.gz")
    return write_transform(transform, transform_path(out, pair.name, method))


def register_dataset(cases: Sequence[Case], method: str, out: str | os.PathLike, *, gland_masks: bool = False,
                     weights: Optional[str | os.PathLike] = None, device: str = "auto", batch_size: Optional[int] = None,
                     warped_out: Optional[str | os.PathLike] = None, overwrite: bool = False) -> DatasetRegistration:
    """Register every case of ``cases`` with ``method`` and write its transform into folder ``out``.

    Args:
        cases: dataset cases (:func:`..io.open_dataset`), TRUS fixed, MRI moving.
        method: any ``--method`` name (:func:`.methods.method_names`).
        out: folder of the transforms, ``CASE.tfm`` or ``CASE.h5`` (:func:`transform_path`).
        gland_masks: gland-driven, on channel 0 of each case's label files (classical methods, ``auto``,
            ``attention-reg``); otherwise image-only.
        weights: checkpoint of a learned method.
        device: ``auto``, ``cpu`` or ``cuda`` for learned methods.
        batch_size: cases per network batch of a learned model (1: case by case; None: :data:`DEFAULT_BATCH_SIZE`).
        warped_out: folder for ``CASE.nii.gz``, the MRI resampled onto the TRUS grid (optional).
        overwrite: replace existing outputs.

    Raises:
        InputError: unknown method, weights for a method that takes none, ``batch_size`` below 1, no case.
        OutputExistsError: an output exists and ``overwrite`` is off (before any work).
    """
    check_method(method, weights)
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    if not cases:
        raise InputError("register: no cases to register")
    out, warped_out = Path(out), Path(warped_out) if warped_out else None
    _check_new(cases, method, out, warped_out, overwrite)
    result, state = DatasetRegistration(), {}
    chunk = batch_size if method in REGISTRATION_MODELS else 1
    with stage("register", total=len(cases)) as bar:
        for first in range(0, len(cases), chunk):
            pairs = []
            for case in cases[first:first + chunk]:
                try:
                    pairs.append(_read_pair(case, gland_masks))
                except CASE_FAILURES as error:
                    result.failed[case.name] = str(error)
            registered = _registered(pairs, method, weights, device, state) if pairs else {}
            for pair in pairs:
                transform = registered[pair.name]
                if isinstance(transform, str):
                    result.failed[pair.name] = transform
                else:
                    result.written[pair.name] = _write(pair, transform, method, out, warped_out)
            bar.advance(len(cases[first:first + chunk]), message=cases[first].name)
    return result
