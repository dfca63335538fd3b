"""Overlap, segmentation and summary metrics against independent oracles (MONAI, NumPy counts, statistics)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.metrics import DiceMetric, compute_iou, compute_confusion_matrix_metric, get_confusion_matrix

from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.metrics import (
    dice,
    iou,
    precision,
    robust_mean,
    segmentation_metrics,
    sensitivity,
    summarize,
    volume_difference_ml,
    volume_ml,
)

OBLIQUE = sitk.VersorTransform((0.3, 0.5, 0.8), 0.6).GetMatrix()


def mask_image(array_zyx, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None, pixel=sitk.sitkUInt8):
    image = sitk.Cast(sitk.GetImageFromArray(np.asarray(array_zyx).astype(np.uint8)), pixel)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def ball(shape, centre_zyx, radius):
    z, y, x = np.indices(shape)
    return (z - centre_zyx[0]) ** 2 + (y - centre_zyx[1]) ** 2 + (x - centre_zyx[2]) ** 2 <= radius**2


def random_pairs():
    """Varied mask pairs: blobs, noise, one voxel, border-touching, one or both empty."""
    rng = np.random.default_rng(0)
    shape = (20, 24, 28)
    one_voxel = np.zeros(shape, bool)
    one_voxel[5, 6, 7] = True
    border = np.zeros(shape, bool)
    border[:, :4, :] = True
    empty = np.zeros(shape, bool)
    return {
        "overlapping_balls": (ball(shape, (10, 12, 14), 6), ball(shape, (11, 13, 12), 5)),
        "noise": (rng.random(shape) > 0.7, rng.random(shape) > 0.5),
        "one_voxel_inside": (one_voxel, ball(shape, (5, 6, 7), 3)),
        "border": (border, ball(shape, (10, 3, 14), 5)),
        "disjoint": (ball(shape, (5, 5, 5), 3), ball(shape, (15, 18, 22), 3)),
        "pred_empty": (empty, ball(shape, (10, 12, 14), 4)),
        "ref_empty": (ball(shape, (10, 12, 14), 4), empty),
    }


def monai_tensor(array):
    return torch.as_tensor(array, dtype=torch.float32)[None, None]


@pytest.mark.parametrize("name", list(random_pairs()))
def test_overlap_against_monai_and_counts(name):
    pred_array, ref_array = random_pairs()[name]
    # labels > 0 in any integer type are foreground: give pred value 3 and a signed type
    pred = mask_image(pred_array * 3, spacing=(0.7, 1.1, 2.5), direction=OBLIQUE, pixel=sitk.sitkInt16)
    ref = mask_image(ref_array, spacing=(0.7, 1.1, 2.5), direction=OBLIQUE)
    p, r = monai_tensor(pred_array), monai_tensor(ref_array)

    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    assert dice(pred, ref) == pytest.approx(float(metric(p, r)[0, 0]), abs=1e-6)
    tp = np.sum(pred_array & ref_array)
    assert dice(pred, ref) == pytest.approx(2 * tp / (pred_array.sum() + ref_array.sum()), abs=1e-12)
    assert iou(pred, ref) == pytest.approx(float(compute_iou(p, r, ignore_empty=False)[0, 0]), abs=1e-6)

    confusion = get_confusion_matrix(p, r, include_background=True)
    monai_sensitivity = float(compute_confusion_matrix_metric("sensitivity", confusion)[0, 0])
    monai_precision = float(compute_confusion_matrix_metric("precision", confusion)[0, 0])
    if ref_array.any():
        assert sensitivity(pred, ref) == pytest.approx(monai_sensitivity, abs=1e-6)
    else:
        assert math.isnan(sensitivity(pred, ref))
    if pred_array.any():
        assert precision(pred, ref) == pytest.approx(monai_precision, abs=1e-6)
    else:
        assert math.isnan(precision(pred, ref))


def test_both_empty_is_perfect_agreement():
    empty = mask_image(np.zeros((8, 8, 8)))
    assert dice(empty, empty) == 1.0
    assert iou(empty, empty) == 1.0
    assert volume_difference_ml(empty, empty) == 0.0
    assert math.isnan(sensitivity(empty, empty)) and math.isnan(precision(empty, empty))


def test_known_values_of_nested_boxes():
    pred_array = np.zeros((10, 10, 10), bool)
    pred_array[2:6, 2:6, 2:6] = True  # 64 voxels
    ref_array = np.zeros((10, 10, 10), bool)
    ref_array[2:6, 2:6, 2:4] = True  # 32 voxels, inside pred
    pred, ref = mask_image(pred_array), mask_image(ref_array)
    assert dice(pred, ref) == pytest.approx(2 * 32 / 96)
    assert iou(pred, ref) == pytest.approx(0.5)
    assert sensitivity(pred, ref) == 1.0
    assert precision(pred, ref) == 0.5


@pytest.mark.parametrize("direction", [None, OBLIQUE])
def test_volume_difference_in_millilitres(direction):
    pred_array = np.zeros((12, 12, 12), bool)
    pred_array[1:11, 1:11, 1:11] = True  # 1000 voxels
    ref_array = np.zeros((12, 12, 12), bool)
    ref_array[1:6, 1:11, 1:11] = True  # 500 voxels
    spacing = (0.5, 0.5, 2.0)  # 0.5 mm^3 per voxel
    pred = mask_image(pred_array, spacing=spacing, direction=direction)
    ref = mask_image(ref_array, spacing=spacing, direction=direction)
    assert volume_difference_ml(pred, ref) == pytest.approx(500 * 0.5 / 1000)
    assert volume_difference_ml(ref, pred) == pytest.approx(-0.25)
    assert volume_ml(pred) == pytest.approx(1000 * 0.5 / 1000)
    assert volume_ml(ref) == pytest.approx(500 * 0.5 / 1000)


def test_masks_on_different_grids_are_rejected():
    a = mask_image(np.ones((8, 8, 8)))
    for other in (
        mask_image(np.ones((8, 8, 9))),
        mask_image(np.ones((8, 8, 8)), spacing=(1.0, 1.0, 1.5)),
        mask_image(np.ones((8, 8, 8)), origin=(0.0, 0.5, 0.0)),
        mask_image(np.ones((8, 8, 8)), direction=OBLIQUE),
    ):
        with pytest.raises(InputError, match="pred and ref must share one voxel grid"):
            dice(a, other)
    with pytest.raises(InputError, match="pred: expected a SimpleITK image"):
        dice(np.ones((8, 8, 8)), a)
    with pytest.raises(InputError, match="scalar 3D"):
        dice(sitk.Image([8, 8], sitk.sitkUInt8), sitk.Image([8, 8], sitk.sitkUInt8))


def test_segmentation_metrics_collects_the_family():
    shape = (16, 16, 16)
    pred = mask_image(ball(shape, (8, 8, 8), 5), spacing=(0.8, 0.8, 1.6))
    ref = mask_image(ball(shape, (8, 8, 9), 5), spacing=(0.8, 0.8, 1.6))
    metrics = segmentation_metrics(pred, ref)
    assert set(metrics) == {"dice", "iou", "hd95_mm", "asd_mm", "volume_difference_ml", "sensitivity", "precision"}
    assert metrics["dice"] == dice(pred, ref) and 0.5 < metrics["dice"] < 1.0
    # a one-voxel shift along x (0.8 mm): no surface point is farther than that shift
    assert 0.0 < metrics["asd_mm"] <= metrics["hd95_mm"] <= 0.8 + 1e-9
    identical = segmentation_metrics(ref, ref)
    assert identical["dice"] == 1.0 and identical["hd95_mm"] == 0.0 and identical["asd_mm"] == 0.0
    assert identical["volume_difference_ml"] == 0.0


def test_summarize_ignores_nan():
    values = [1.0, 2.0, math.nan, 4.0, 8.0]
    clean = [1.0, 2.0, 4.0, 8.0]
    summary = summarize(values)
    assert summary == {
        "mean": pytest.approx(statistics.mean(clean)),
        "std": pytest.approx(statistics.stdev(clean)),
        "median": pytest.approx(statistics.median(clean)),
        "n": 4,
    }
    assert summarize([math.nan])["n"] == 0 and math.isnan(summarize([])["mean"])
    assert math.isnan(summarize([3.0])["std"])


def test_robust_mean_keeps_the_best_fraction():
    values = list(range(1, 101))  # 68 best of 100
    assert robust_mean(values, higher_is_better=True) == pytest.approx(statistics.mean(range(33, 101)))
    assert robust_mean(values, higher_is_better=False) == pytest.approx(statistics.mean(range(1, 69)))
    # 0.68 * 25 is 17.000000000000004 in floating point: still 17 values kept, not 18
    assert robust_mean(range(25), higher_is_better=False) == pytest.approx(statistics.mean(range(17)))
    assert robust_mean([0.2, math.nan, 0.9, 0.5], fraction=0.5) == pytest.approx(0.7)
    assert math.isnan(robust_mean([math.nan]))
    with pytest.raises(InputError, match="fraction"):
        robust_mean([1.0], fraction=0.0)
