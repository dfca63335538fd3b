"""Segmentation evaluation of a whole dataset: predicted masks against the ground truth of each case.

Predictions are ``<case>.seg.nrrd`` (Slicer) or ``<case>.nii.gz`` (also ``.nii``, ``.nrrd``, ``.mha``) label
maps on the grid of the ground truth. The ground truth of a case is the file its dataset lists under
``label_folder``: an extras folder of the dataset (``fixed_tumour_labels/<case>.nii.gz`` of a phantom dataset,
``fixed_zone_labels``, ...) or a CSV-manifest column of that name; ``fixed_label``/``moving_label`` (or the
layout's folder names ``fixed_labels``, ``us_labels``, ...) take the case's multi-channel label file, whose
channel 0 (the gland) is the ground truth.

Structures: by default one, ``foreground`` (label > 0 in both); with ``label_values`` one per value ``v``
(``label == v`` in both), named ``label_<v>``. Per structure and case, the metrics of
:func:`MRITRUSFusionLib.metrics.segmentation_metrics`: ``dice``, ``iou``, ``sensitivity``, ``precision``,
``hd95_mm``, ``asd_mm``, ``volume_difference_ml`` (empty-mask conventions of :mod:`MRITRUSFusionLib.metrics`).
The summary gives, per structure and metric, mean, std, median and n over cases (nan ignored).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from .. import progress
from ..errors import InputError
from ..io import Case, open_dataset, read_label_channels, read_seg_nrrd
from ..io.atomic import full_suffix
from ..io.datasets import DEEPREG_FOLDERS, MUREGPRO_FOLDERS
from ..io.labels import as_label_map
from ..io.volumes import read_image
from ..metrics._image import check_same_grid
from ..metrics.segmentation import segmentation_metrics
from ..metrics.summary import summarize
from .predictions import IMAGE_SUFFIXES, find_case_files, select_cases
from .result import EvaluationResult


def _label_role(label_folder: str) -> str | None:
    """``fixed_label``/``moving_label`` when ``label_folder`` names the case's own label file, else None."""
    for role in ("fixed_label", "moving_label"):
        if label_folder in (role, DEEPREG_FOLDERS[role], MUREGPRO_FOLDERS[role]):
            return role
    return None


def ground_truth_path(case: Case, label_folder: str) -> Path:
    """Path of the ground truth of ``case`` under ``label_folder`` (see the module docstring)."""
    role = _label_role(label_folder)
    path = getattr(case, role) if role and label_folder not in case.extras else case.extras.get(label_folder)
    if path is None:
        raise InputError(f"label folder {label_folder!r}: case {case.name} has no ground truth there"
                         f" (extras: {', '.join(case.extras) or 'none'})")
    return path


def read_segmentation(path: str | os.PathLike, name: str) -> sitk.Image:
    """A 3D integer label map from ``.seg.nrrd`` or any label image; a multi-channel (4D or vector) file
    gives its channel 0 (the gland) as a 0/1 map."""
    path = Path(path)
    if full_suffix(path) == ".seg.nrrd":
        return read_seg_nrrd(path)[0]
    image = read_image(path, name=name)
    if image.GetDimension() == 4 or image.GetNumberOfComponentsPerPixel() > 1:
        return read_label_channels(path, name=name)[0]
    return as_label_map(image, f"{name} {path}")


def _structures(pred: sitk.Image, ref: sitk.Image,
                label_values: Sequence[int] | None) -> list[tuple[str, sitk.Image, sitk.Image]]:
    if label_values is None:
        return [("foreground", pred > 0, ref > 0)]
    return [(f"label_{value}", pred == value, ref == value) for value in label_values]


def evaluate_segmentation_dataset(
    dataset: str | os.PathLike,
    predictions: str | os.PathLike,
    label_folder: str = "fixed_tumour_labels",
    split: str | None = None,
    label_values: Sequence[int] | None = None,
    case_names: Sequence[str] | None = None,
) -> EvaluationResult:
    """Evaluate the predicted segmentation of every case of ``dataset`` against its ground truth.

    Args:
        dataset: DeepReg paired, μ-RegPro or CSV manifest dataset (:func:`MRITRUSFusionLib.io.open_dataset`).
        predictions: folder of ``<case>.seg.nrrd`` / ``<case>.nii.gz`` label maps, one for every case.
        label_folder: where each case's ground truth is (module docstring).
        split: μ-RegPro split.
        label_values: evaluate these label values as separate structures; None: foreground (> 0) only.
        case_names: evaluate only these cases; None: all.

    Returns:
        :class:`EvaluationResult` with one row per case and structure (``case``, ``structure``,
        ``prediction`` and the metrics) and the summary ``{"structures": {name: {metric: {mean, std, median,
        n}}}, ...}``.

    Raises:
        InputError: no case, a missing prediction or ground truth (named), or a prediction on another grid.
    """
    cases = select_cases(open_dataset(dataset, split), case_names, dataset)
    files = find_case_files(predictions, [c.name for c in cases], IMAGE_SUFFIXES, what="segmentation")
    truths = {case.name: ground_truth_path(case, label_folder) for case in cases}
    rows: list[dict[str, Any]] = []
    with progress.stage("evaluate segmentation", total=len(cases)) as bar:
        for case in cases:
            pred = read_segmentation(files[case.name], f"case {case.name} prediction")
            ref = read_segmentation(truths[case.name], f"case {case.name} ground truth")
            check_same_grid(pred, ref, f"prediction {files[case.name]}", f"ground truth {truths[case.name]}")
            for structure, pred_mask, ref_mask in _structures(pred, ref, label_values):
                rows.append({"case": case.name, "structure": structure, "prediction": files[case.name].name,
                             **segmentation_metrics(pred_mask, ref_mask)})
            bar.advance(message=case.name)
    structures: dict[str, dict[str, Any]] = {}
    for structure in dict.fromkeys(row["structure"] for row in rows):
        chosen = [row for row in rows if row["structure"] == structure]
        metrics = [k for k in chosen[0] if k not in ("case", "structure", "prediction")]
        structures[structure] = {metric: summarize(row[metric] for row in chosen) for metric in metrics}
    summary = {"kind": "segmentation", "dataset": str(dataset), "predictions": str(predictions),
               "label_folder": label_folder, "split": split, "num_cases": len(cases), "structures": structures}
    return EvaluationResult("segmentation", rows, summary)
