"""Seed-000 lesion/patient-level detection rules and PI-CAI metrics on hand-built cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.metrics.detection import (
    DetectionCounts,
    detection_rates,
    lesion_level_counts,
    patient_level_metrics,
    patient_outcome,
    picai_metrics,
    roc_auc,
    sextant_map,
)

N = 24  # gland = the whole 24^3 grid: x splits at 11.5, z thirds 0-7 apex, 8-15 mid, 16-23 base
SEGMENT_SIZE = 8 * 24 * 12  # 2304 voxels; 1 % = 23.04 voxels


def image(array_zyx, direction=None, pixel=np.uint8):
    result = sitk.GetImageFromArray(np.asarray(array_zyx).astype(pixel))
    result.SetSpacing((0.7, 0.9, 1.1))
    result.SetOrigin((-10.0, 4.0, 2.0))
    if direction is not None:
        result.SetDirection(direction)
    return result


def test_sextants_of_an_axis_aligned_box():
    labels = sitk.GetArrayFromImage(sextant_map(image(np.ones((N, N, N)))))
    z, x = np.indices((N, N, N))[0], np.indices((N, N, N))[2]
    left = x >= 12
    level = np.where(z >= 16, 0, np.where(z >= 8, 1, 2))  # base, mid, apex
    np.testing.assert_array_equal(labels, 1 + 3 * left + level)
    assert np.all(np.bincount(labels.ravel())[1:] == SEGMENT_SIZE)


def test_sextants_follow_physical_space_not_the_voxel_grid():
    gland = np.zeros((N, N, N))
    gland[2:20, 3:21, 1:23] = 1
    flipped = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # index x runs to the right, index z downwards
    straight = sitk.GetArrayFromImage(sextant_map(image(gland)))
    reversed_axes = sitk.GetArrayFromImage(sextant_map(image(gland[::-1, :, ::-1], direction=flipped)))
    # the same anatomy stored reversed along x and z: flipping the array back gives the same labels
    np.testing.assert_array_equal(reversed_axes[::-1, :, ::-1], straight)
    assert set(np.unique(straight)) == {0, 1, 2, 3, 4, 5, 6}
    with pytest.raises(InputError, match="gland: empty"):
        sextant_map(image(np.zeros((4, 4, 4))))


GRID = (30, 20, 20)  # z thirds 0-9 apex, 10-19 mid, 20-29 base; x splits at 9.5: segments of 10*20*10 = 2000


def lesion_case(hits_a, size_b, false_positive_voxels):
    """Reference: lesion A (100 voxels, right base), lesion B (``size_b`` voxels, right mid). Prediction:
    ``hits_a`` voxels of A and a blob of ``false_positive_voxels`` in the left apex."""
    ref = np.zeros(GRID, bool)
    ref[22:26, 2:7, 2:7] = True
    ref[12:14, 0:10, 0].flat[:size_b] = True
    pred = np.zeros(GRID, bool)
    pred[22:26, 2:7, 2:7].flat[:hits_a] = True
    pred[0:2, 0:20, 12:19].flat[:false_positive_voxels] = True
    segments = sextant_map(image(np.ones(GRID)))
    return image(pred), image(ref), segments


def test_lesion_level_counts_at_the_one_percent_boundaries():
    # A: 1 of 100 voxels (exactly 1 %) is a hit; B: not hit. Right mid holds 20 of 2000 cancer voxels (exactly
    # 1 %, not less): reference positive, outside TN/FP. Left apex: 21 of 2000 predicted (> 1 %) is an FP.
    # Reference negatives: segments 3, 4, 5, 6 (right base holds A); segment 6 is the FP.
    assert lesion_level_counts(*lesion_case(1, 20, 21)) == DetectionCounts(tp=1, fn=1, fp=1, tn=3)
    # A: no hit; right mid: 19 cancer voxels (< 1 %) is reference negative; left apex: 20 predicted voxels
    # (exactly 99 % normal) is a TN. Reference negatives: segments 2 to 6, all TN.
    assert lesion_level_counts(*lesion_case(0, 19, 20)) == DetectionCounts(tp=0, fn=2, fp=0, tn=5)


def test_lesion_components_are_26_connected():
    ref = np.zeros((N, N, N), bool)
    ref[5, 5, 5] = ref[6, 6, 6] = True  # corner neighbours: one lesion
    pred = np.zeros((N, N, N), bool)
    pred[5, 5, 5] = True
    segments = sextant_map(image(np.ones((N, N, N))))
    assert lesion_level_counts(image(pred), image(ref), segments).tp == 1
    assert lesion_level_counts(image(pred), image(ref), segments).fn == 0


def test_lesion_level_counts_rejects_mismatched_grids():
    pred, ref, _ = lesion_case(1, 20, 0)
    with pytest.raises(InputError, match="segments and ref must share one voxel grid"):
        lesion_level_counts(pred, ref, image(np.ones((N, N, N))))


def test_detection_rates_and_patient_outcomes():
    rates = detection_rates(DetectionCounts(tp=3, fn=1, fp=2, tn=4))
    expected = {"sensitivity": 0.75, "specificity": 4 / 6, "ppv": 0.6, "npv": 0.8, "accuracy": 0.7}
    assert rates == pytest.approx(expected)
    assert math.isnan(detection_rates(DetectionCounts(tn=2))["sensitivity"])
    assert DetectionCounts(1, 2, 3, 4) + DetectionCounts(10, 20, 30, 40) == DetectionCounts(11, 22, 33, 44)

    assert patient_outcome(DetectionCounts(tp=1, fn=3, fp=5)) == DetectionCounts(tp=1)
    assert patient_outcome(DetectionCounts(fn=1, fp=2, tn=3)) == DetectionCounts(fn=1)
    assert patient_outcome(DetectionCounts(fp=1, tn=5)) == DetectionCounts(fp=1)
    assert patient_outcome(DetectionCounts(tn=6)) == DetectionCounts(tn=1)


def test_patient_level_metrics():
    cases = [
        DetectionCounts(tp=1, tn=5),  # TP
        DetectionCounts(fn=1, tn=5),  # FN
        DetectionCounts(tn=6),  # TN
        DetectionCounts(fp=2, tn=4),  # FP
        DetectionCounts(tp=2, fn=1, fp=1),  # TP
    ]
    scores = [0.9, 0.3, 0.2, 0.6, 0.3]
    metrics = patient_level_metrics(cases, scores)
    assert metrics["sensitivity"] == pytest.approx(2 / 3) and metrics["specificity"] == pytest.approx(0.5)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    # positives {0.9, 0.3, 0.3} vs negatives {0.2, 0.6}: pairs won 2 + 1 + 1 of 6
    assert metrics["auc"] == pytest.approx(4 / 6)
    with pytest.raises(InputError, match="case_counts and scores"):
        patient_level_metrics(cases, scores[:2])


def test_roc_auc_matches_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(5)
    labels = rng.random(40) > 0.5
    scores = np.round(rng.random(40) + 0.3 * labels, 1)  # rounded: ties included
    assert roc_auc(labels, scores) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)
    assert math.isnan(roc_auc([True, True], [0.1, 0.2]))


def cube(start, size=4, value=1.0, shape=(16, 16, 16)):
    array = np.zeros(shape, np.float32)
    array[start[0] : start[0] + size, start[1] : start[1] + size, start[2] : start[2] + size] = value
    return array


def test_picai_metrics_on_generated_detection_maps():
    lesion = cube((3, 3, 3))
    elsewhere = (10, 10, 10)
    empty = np.zeros((16, 16, 16), np.float32)
    # A: lesion found at 0.9; B: found at 0.6; C: no lesion, candidate at 0.7; D: lesion missed, candidate at 0.3
    detection_maps = [lesion * 0.9, lesion * 0.6, cube(elsewhere, value=0.7), cube(elsewhere, value=0.3)]
    labels = [lesion, lesion, empty, lesion]
    metrics = picai_metrics([image(d, pixel=np.float32) for d in detection_maps], [image(y) for y in labels])
    # lesion ranking 0.9 TP, 0.7 FP, 0.6 TP, 0.3 FP, missed lesion: AP = 1/3 * 1 + 1/3 * 2/3 = 5/9
    # case ranking: positives {0.9, 0.6, 0.3} vs negative {0.7}: AUROC = 1/3
    assert metrics["ap"] == pytest.approx(5 / 9)
    assert metrics["auroc"] == pytest.approx(1 / 3)
    assert metrics["picai_score"] == pytest.approx((5 / 9 + 1 / 3) / 2)
    assert metrics["num_cases"] == 4 and metrics["num_lesions"] == 3

    perfect = picai_metrics(
        [image(lesion * 0.8, pixel=np.float32), image(empty, pixel=np.float32)], [image(lesion), image(empty)]
    )
    assert perfect["auroc"] == 1.0 and perfect["ap"] == 1.0 and perfect["picai_score"] == 1.0


def test_picai_metrics_rejects_bad_inputs():
    lesion = cube((3, 3, 3))
    with pytest.raises(InputError, match="confidences must be non-negative"):
        picai_metrics([image(-lesion, pixel=np.float32)], [image(lesion)])
    with pytest.raises(InputError, match="detection_maps and labels"):
        picai_metrics([], [])
