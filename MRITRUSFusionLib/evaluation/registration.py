"""Registration evaluation of a whole dataset: gland overlap, surface distances and landmark TRE of every case
before (identity) and after (the predicted transform), per case, per landmark and summarised over cases.

Roles and units (ARCHITECTURE.md): TRUS is fixed, MRI is moving, a predicted transform maps a TRUS point to an
MRI point (LPS mm); distances are in mm (``*_mm``) unless a key ends in ``_vox`` (see :mod:`.voxel_units`).

Per case (CSV columns ``<metric>_before[_unit]`` and ``<metric>_after[_unit]``):

* ``dice``, ``hd95_mm``, ``asd_mm``: fixed gland (label channel 0) vs the moving gland warped onto the TRUS
  grid (:func:`MRITRUSFusionLib.metrics.registration_metrics`).
* ``tre_rms_mm``: the case's TRE as seed 001 and μ-RegPro define it, the root mean square over the case's
  landmark pairs of ``||T(f) - m||`` (centroids, mm); also ``tre_mean_mm`` and ``tre_median_mm``.
* ``sre_mm`` when the dataset holds ground-truth transforms (``transforms/<case>.h5`` of a phantom
  dataset): mean over the fixed gland's surface voxels of ``||T(p) - T_true(p)||``.
* ``folding_fraction``, ``log_jacobian_std``: deformable (non-linear) transforms only.
* With ``unit="vox"`` also ``hd95_vox``, ``asd_vox``, ``tre_rms_vox``, ``tre_mean_vox``, ``tre_median_vox``
  (and ``sre_vox``): the μ-RegPro voxel-unit variants, in voxels of the fixed image's grid (:mod:`.voxel_units`).

Dataset summary, for ``before`` and ``after``: mean, sample standard deviation, median and count of every
per-case metric (:func:`MRITRUSFusionLib.metrics.summarize`), and μ-RegPro's robust metrics
(:func:`MRITRUSFusionLib.metrics.robust_mean`, best 68 % of cases): ``rdsc`` = mean of the highest 68 % of the
per-case ``dice``, ``rtre_mm`` = mean of the lowest 68 % of the per-case ``tre_rms_mm`` (``rtre_vox`` likewise).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

from .. import progress
from ..errors import InputError
from ..io import Case, open_dataset, read_label_channels, read_transform, read_volume
from ..metrics.registration import Interpolation, registration_metrics, surface_registration_error
from ..metrics.summary import robust_mean, summarize
from .montage import case_montage
from .predictions import TRANSFORM_SUFFIXES, find_case_files, select_cases
from .result import EvaluationResult, phased, unphased
from .voxel_units import landmark_tre_vox, surface_metrics_vox

Unit = Literal["mm", "vox"]
PHASES = ("before", "after")
#: μ-RegPro's robust metrics keep the best 68 % of cases.
ROBUST_FRACTION = 0.68

DEFINITIONS = {
    "dice": "gland Dice of the fixed (TRUS) gland and the moving (MRI) gland warped onto the TRUS grid",
    "hd95_mm": "95th-percentile symmetric Hausdorff distance of the two gland surfaces (MONAI definition), mm",
    "asd_mm": "average symmetric surface distance of the two gland surfaces, mm",
    "tre_rms_mm": "per case: root mean square over landmark pairs of ||T(fixed centroid) - moving centroid||, "
                  "mm (the TRE of seed 001 and μ-RegPro)",
    "tre_mean_mm": "per case: mean landmark TRE, mm",
    "tre_median_mm": "per case: median landmark TRE, mm",
    "sre_mm": "per case: mean over fixed gland surface voxels of ||T(p) - T_true(p)||, mm",
    "folding_fraction": "fraction of fixed-grid voxels with Jacobian determinant <= 0 (deformable transforms)",
    "log_jacobian_std": "standard deviation of log Jacobian determinant over the fixed grid (deformable transforms)",
    "rdsc": "mean of the highest robust_fraction (μ-RegPro: 68 %, ceil(0.68 n) cases) of per-case dice "
            "(μ-RegPro robust DSC)",
    "rtre_mm": "mean of the lowest robust_fraction (68 %) of per-case tre_rms_mm (μ-RegPro robust TRE)",
    "landmark_tre_mm": "summary over all landmarks of all cases of the per-landmark TRE, mm",
    "*_vox": "μ-RegPro voxel-unit variant: the difference vector expressed in voxel indices of the fixed "
             "image's grid ((D diag(spacing))^-1 v, i.e. divided by the fixed voxel size along each grid axis), "
             "then its length; = mm / spacing on an isotropic grid",
    "summary statistics": "mean, std (sample, ddof=1), median and n over cases, nan ignored; null = undefined",
}


def _tre_statistics(tre: np.ndarray, unit: str) -> dict[str, float]:
    """``tre_rms_<unit>``, ``tre_mean_<unit>``, ``tre_median_<unit>`` of one case's landmark TREs."""
    return {f"tre_rms_{unit}": float(np.sqrt(np.mean(np.square(tre)))),
            f"tre_mean_{unit}": float(np.mean(tre)),
            f"tre_median_{unit}": float(np.median(tre))}


def case_registration_metrics(
    fixed_channels: Sequence[sitk.Image],
    moving_channels: Sequence[sitk.Image],
    transform: sitk.Transform,
    transform_true: sitk.Transform | None = None,
    unit: Unit = "mm",
    interpolation: Interpolation = "linear",
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Scalar metrics of one case (keys in the module docstring) and its per-landmark TREs
    (``{"tre_mm": [...]}``, plus ``"tre_vox"`` with ``unit="vox"``; empty without landmark channels)."""
    if unit not in ("mm", "vox"):
        raise InputError(f"unit: expected 'mm' or 'vox', got {unit!r}")
    metrics = registration_metrics(fixed_channels, moving_channels, transform, transform_true, "mm", interpolation)
    tre_mm = metrics.pop("tre_mm", None)
    for key in ("tre_mean_mm", "tre_median_mm"):
        metrics.pop(key, None)
    scalars: dict[str, float] = {k: metrics[k] for k in ("dice", "hd95_mm", "asd_mm")}
    landmarks: dict[str, list[float]] = {}
    if tre_mm is not None:
        scalars.update(_tre_statistics(np.asarray(tre_mm), "mm"))
        landmarks["tre_mm"] = list(tre_mm)
    if unit == "vox":
        scalars.update(surface_metrics_vox(fixed_channels[0], moving_channels[0], transform, interpolation))
        if tre_mm is not None:
            tre_vox = landmark_tre_vox(fixed_channels[1:], moving_channels[1:], transform)
            scalars.update(_tre_statistics(tre_vox, "vox"))
            landmarks["tre_vox"] = tre_vox.tolist()
    scalars.update({k: v for k, v in metrics.items() if k not in scalars})  # sre_mm, folding_fraction, ...
    if transform_true is not None and unit == "vox":
        scalars["sre_vox"] = surface_registration_error(fixed_channels[0], transform, transform_true, "vox")
    return scalars, landmarks


def _case_rows(name: str, prediction: str, phases: dict[str, tuple[dict, dict]]) -> tuple[dict, list[dict]]:
    """The per-case row (before/after columns interleaved) and per-landmark rows of one case."""
    row: dict[str, Any] = {"case": name, "prediction": prediction,
                           "num_landmarks": len(phases["before"][1].get("tre_mm", []))}
    keys = list(dict.fromkeys(k for phase in PHASES for k in phases[phase][0]))
    for key in keys:
        for phase in PHASES:
            if key in phases[phase][0]:
                row[phased(key, phase)] = phases[phase][0][key]
    landmark_rows = []
    for index in range(row["num_landmarks"]):
        landmark_row: dict[str, Any] = {"case": name, "landmark": index + 1}
        for unit_key in ("tre_mm", "tre_vox"):
            for phase in PHASES:
                if unit_key in phases[phase][1]:
                    landmark_row[phased(unit_key, phase)] = phases[phase][1][unit_key][index]
        landmark_rows.append(landmark_row)
    return row, landmark_rows


def _read_case_labels(case: Case) -> tuple[list[sitk.Image], list[sitk.Image]]:
    if case.fixed_label is None or case.moving_label is None:
        raise InputError(f"case {case.name}: needs both a fixed and a moving label file (gland + landmarks)")
    fixed = read_label_channels(case.fixed_label, name=f"case {case.name} fixed label")
    moving = read_label_channels(case.moving_label, name=f"case {case.name} moving label")
    if len(fixed) != len(moving):
        raise InputError(f"case {case.name}: fixed label has {len(fixed)} channels but moving label {len(moving)}")
    return fixed, moving


def summarize_registration(rows: Sequence[dict[str, Any]], landmark_rows: Sequence[dict[str, Any]],
                           robust_fraction: float = ROBUST_FRACTION) -> dict[str, dict[str, Any]]:
    """``{"before": {...}, "after": {...}}``: per metric ``{"mean", "std", "median", "n"}`` over cases, and
    ``rdsc``, ``rtre_mm`` (``rtre_vox``), ``landmark_tre_mm`` (``landmark_tre_vox``)."""
    metric_keys = [key for key in dict.fromkeys(unphased(column, phase) for row in rows for column in row
                                                for phase in PHASES) if key is not None]
    summary: dict[str, dict[str, Any]] = {}
    for phase in PHASES:
        part: dict[str, Any] = {}
        for key in metric_keys:
            values = [row[phased(key, phase)] for row in rows if phased(key, phase) in row]
            if values:
                part[key] = summarize(values)
        dice = [row[phased("dice", phase)] for row in rows]
        part["rdsc"] = robust_mean(dice, robust_fraction, higher_is_better=True)
        for unit in ("mm", "vox"):
            tre = [row[phased(f"tre_rms_{unit}", phase)] for row in rows if phased(f"tre_rms_{unit}", phase) in row]
            if tre:
                part[f"rtre_{unit}"] = robust_mean(tre, robust_fraction, higher_is_better=False)
        for unit in ("mm", "vox"):
            landmark_tre = [r[phased(f"tre_{unit}", phase)] for r in landmark_rows if phased(f"tre_{unit}", phase) in r]
            if landmark_tre:
                part[f"landmark_tre_{unit}"] = summarize(landmark_tre)
        summary[phase] = part
    return summary


def evaluate_registration_dataset(
    dataset: str | os.PathLike,
    predictions: str | os.PathLike | None = None,
    split: str | None = None,
    unit: Unit = "mm",
    *,
    true_transforms: str | None = "transforms",
    interpolation: Interpolation = "linear",
    montage_cases: int = 4,
    robust_fraction: float = ROBUST_FRACTION,
    case_names: Sequence[str] | None = None,
) -> EvaluationResult:
    """Evaluate the registration of every case of ``dataset`` (DeepReg paired, μ-RegPro or CSV manifest layout,
    see :func:`MRITRUSFusionLib.io.open_dataset`; ``split`` picks a μ-RegPro split).

    Args:
        dataset: the dataset; every case needs fixed and moving label files (channel 0 gland, 1.. landmarks).
        predictions: folder holding ``<case>.h5``, ``<case>.tfm`` or ``<case>.txt`` for every case (an ITK
            transform, TRUS point -> MRI point); None evaluates the identity, so "after" equals "before".
        unit: ``"mm"``, or ``"vox"`` to add the μ-RegPro voxel-unit variants (:mod:`.voxel_units`).
        true_transforms: name of the case extras folder (or manifest column) holding ground-truth transforms;
            where a case has one, its SRE is computed. None skips SRE.
        interpolation: how the moving gland is warped (:func:`MRITRUSFusionLib.metrics.warp_mask`).
        montage_cases: how many cases (the first ones with a non-empty fixed gland) get a slice montage in
            the report.
        robust_fraction: share of best cases kept by ``rdsc``/``rtre_*`` (μ-RegPro: 0.68).
        case_names: evaluate only these cases (e.g. the training cases obs000..obs079); None: all.

    Returns:
        An :class:`EvaluationResult` with one row per case, one landmark row per landmark, the summary
        described in the module docstring, and up to ``montage_cases`` montages.

    Raises:
        InputError: no case, an unknown name in ``case_names``, a missing or ambiguous prediction (the message names the first missing cases),
            a case without labels, channel counts that differ, or an unreadable file (named).
    """
    if unit not in ("mm", "vox"):
        raise InputError(f"unit: expected 'mm' or 'vox', got {unit!r}")
    cases = select_cases(open_dataset(dataset, split), case_names, dataset)
    names = [case.name for case in cases]
    files = find_case_files(predictions, names, TRANSFORM_SUFFIXES, what="transform") if predictions else {}
    rows, landmark_rows, montages = [], [], []
    with progress.stage("evaluate registration", total=len(cases)) as bar:
        for case in cases:
            try:
                fixed, moving = _read_case_labels(case)
                transform = read_transform(files[case.name], name="prediction") if files else sitk.Transform()
                truth_path = case.extras.get(true_transforms) if true_transforms else None
                truth = read_transform(truth_path, name="ground-truth transform") if truth_path else None
                before = case_registration_metrics(fixed, moving, sitk.Transform(), truth, unit, interpolation)
                after = case_registration_metrics(fixed, moving, transform, truth, unit, interpolation) if files \
                    else before
                if len(montages) < montage_cases and sitk.GetArrayViewFromImage(fixed[0]).any():
                    fixed_image = read_volume(case.fixed_image, name=f"case {case.name} fixed image")
                    montages.append(case_montage(case.name, fixed_image, fixed[0], moving[0], transform))
            except InputError as error:
                message = str(error)
                raise InputError(message if case.name in message else f"case {case.name}: {message}") from None
            row, case_landmarks = _case_rows(case.name, files[case.name].name if files else "identity",
                                             {"before": before, "after": after})
            rows.append(row)
            landmark_rows.extend(case_landmarks)
            bar.advance(message=case.name)
    summary = {
        "kind": "registration",
        "dataset": str(dataset),
        "predictions": str(predictions) if predictions else None,
        "split": split,
        "unit": unit,
        "robust_fraction": robust_fraction,
        "num_cases": len(rows),
        "num_landmarks": len(landmark_rows),
        **summarize_registration(rows, landmark_rows, robust_fraction),
        "definitions": DEFINITIONS,
    }
    return EvaluationResult("registration", rows, summary, landmark_rows, montages)
