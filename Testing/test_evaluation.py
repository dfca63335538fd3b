"""Dataset evaluation (MRITRUSFusionLib.evaluation) on a tiny phantom dataset with known ground truth.

Oracles: the phantom's ground-truth transforms (TRE ~ 0, Dice ~ 1 after), the identity (after = before),
a NumPy sort for μ-RegPro's RDSC/RTRE, the ground truth itself for segmentation, and ``picai_eval.evaluate``
called directly for detection.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.image import imread

from MRITRUSFusionLib.errors import InputError, OutputExistsError
from MRITRUSFusionLib.evaluation import (
    evaluate_detection_dataset,
    evaluate_registration_dataset,
    evaluate_segmentation_dataset,
    summarize_registration,
    write_outputs,
    write_registration_report_png,
)
from MRITRUSFusionLib.io import default_segments, read_label, write_seg_nrrd, write_transform
from MRITRUSFusionLib.phantom import generate_phantom, write_phantom_case

CASES = ("obs000", "obs001", "obs002")
TRUS_SPACING_MM = 1.6
UNITLESS = {"dice", "rdsc", "folding_fraction", "log_jacobian_std", "iou", "sensitivity", "precision"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    for seed, name in enumerate(CASES):
        case = generate_phantom(seed=seed, trus_size=(48, 48, 48), trus_spacing=(TRUS_SPACING_MM,) * 3,
                                mri_size=(40, 40, 28), mri_spacing=(2, 2, 3))
        write_phantom_case(case, root, name)
    return root


@pytest.fixture(scope="module")
def truth_result(dataset, tmp_path_factory):
    """Evaluation with the ground-truth transforms as predictions, voxel units included."""
    predictions = tmp_path_factory.mktemp("truth_predictions")
    for path in (dataset / "transforms").iterdir():
        shutil.copy(path, predictions / path.name)
    return evaluate_registration_dataset(dataset, predictions, unit="vox")


def robust_oracle(values, higher_is_better: bool, fraction: float = 0.68) -> float:
    ordered = np.sort(np.asarray(values, dtype=float))
    kept = math.ceil(fraction * len(ordered))
    return float(np.mean(ordered[-kept:] if higher_is_better else ordered[:kept]))


def test_ground_truth_transforms_register_perfectly(truth_result):
    rows = truth_result.rows
    assert [row["case"] for row in rows] == list(CASES)
    for row in rows:
        assert row["prediction"] == f"{row['case']}.h5"
        assert row["tre_rms_after_mm"] < 0.5 and row["tre_mean_after_mm"] < 0.5
        assert row["dice_after"] > 0.9 and row["dice_after"] > row["dice_before"]
        assert row["tre_rms_before_mm"] > 3.0
        assert row["sre_after_mm"] == pytest.approx(0.0, abs=1e-6)  # the prediction is the true transform
        assert row["folding_fraction_after"] == 0.0
        assert "folding_fraction_before" not in row  # the identity is linear
    landmarks = truth_result.landmark_rows
    assert len(landmarks) == sum(row["num_landmarks"] for row in rows) > 0
    first = [r for r in landmarks if r["case"] == "obs000"]
    tre = np.array([r["tre_after_mm"] for r in first])
    assert rows[0]["tre_rms_after_mm"] == pytest.approx(np.sqrt(np.mean(tre**2)))


def test_voxel_units_divide_by_the_isotropic_trus_spacing(truth_result):
    for row in truth_result.rows:
        for phase in ("before", "after"):
            for metric in ("tre_rms", "tre_mean", "hd95", "asd", "sre"):
                assert row[f"{metric}_{phase}_vox"] == pytest.approx(row[f"{metric}_{phase}_mm"] / TRUS_SPACING_MM,
                                                                     rel=1e-6, abs=1e-6)
    for row in truth_result.landmark_rows:
        assert row["tre_before_vox"] == pytest.approx(row["tre_before_mm"] / TRUS_SPACING_MM)


def test_summary_statistics_and_robust_metrics(truth_result):
    rows, summary = truth_result.rows, truth_result.summary
    assert summary["num_cases"] == len(CASES) and summary["unit"] == "vox"
    for phase in ("before", "after"):
        dice = [row[f"dice_{phase}"] for row in rows]
        tre = [row[f"tre_rms_{phase}_mm"] for row in rows]
        part = summary[phase]
        assert part["dice"]["mean"] == pytest.approx(np.mean(dice))
        assert part["dice"]["std"] == pytest.approx(np.std(dice, ddof=1))
        assert part["tre_rms_mm"]["median"] == pytest.approx(np.median(tre))
        assert part["rdsc"] == pytest.approx(robust_oracle(dice, higher_is_better=True))
        assert part["rtre_mm"] == pytest.approx(robust_oracle(tre, higher_is_better=False))
        assert part["rtre_vox"] == pytest.approx(robust_oracle([r[f"tre_rms_{phase}_vox"] for r in rows], False))
    # With 3 cases 68 % keeps all of them; 10 cases keep the best 7, from the right end for each metric.
    rng = np.random.default_rng(0)
    dice, tre = rng.uniform(0.5, 0.95, 10), rng.uniform(1.0, 9.0, 10)
    synthetic = [{"case": f"c{i}", "dice_before": d, "dice_after": d, "tre_rms_before_mm": t, "tre_rms_after_mm": t}
                 for i, (d, t) in enumerate(zip(dice, tre))]
    robust = summarize_registration(synthetic, [])["after"]
    assert robust["rdsc"] == pytest.approx(np.mean(np.sort(dice)[-7:]))
    assert robust["rtre_mm"] == pytest.approx(np.mean(np.sort(tre)[:7]))
    assert robust["rdsc"] > np.mean(dice) and robust["rtre_mm"] < np.mean(tre)


def test_identity_predictions_match_before(dataset, tmp_path):
    for name in CASES:
        write_transform(sitk.AffineTransform(3), tmp_path / f"{name}.tfm")
    identity = evaluate_registration_dataset(dataset, tmp_path, montage_cases=0)
    without = evaluate_registration_dataset(dataset, None, montage_cases=0)
    assert without.summary["predictions"] is None
    for row, plain in zip(identity.rows, without.rows):
        assert plain["prediction"] == "identity"
        for metric in ("dice", "hd95_mm", "asd_mm", "tre_rms_mm", "sre_mm"):
            before, after = metric.replace("_mm", "_before_mm"), metric.replace("_mm", "_after_mm")
            if not metric.endswith("_mm"):
                before, after = f"{metric}_before", f"{metric}_after"
            assert row[after] == pytest.approx(row[before], abs=1e-9)
            assert plain[after] == pytest.approx(row[before], abs=1e-9)
    assert identity.summary["after"]["rtre_mm"] == pytest.approx(identity.summary["before"]["rtre_mm"])


def test_missing_prediction_names_the_case(dataset, tmp_path):
    write_transform(sitk.AffineTransform(3), tmp_path / "obs000.tfm")
    with pytest.raises(InputError, match=r"no transform for case obs001 \(expected obs001\.h5.*also missing: obs002"):
        evaluate_registration_dataset(dataset, tmp_path)
    write_transform(sitk.AffineTransform(3), tmp_path / "obs000.txt")
    with pytest.raises(InputError, match="case obs000 has several transform files"):
        evaluate_registration_dataset(dataset, tmp_path)
    with pytest.raises(InputError, match="no such folder"):
        evaluate_registration_dataset(dataset, tmp_path / "absent")


def _walk_keys(value, path=()):
    if isinstance(value, dict):
        for key, item in value.items():
            yield path + (key,)
            yield from _walk_keys(item, path + (key,))


def test_write_outputs_csv_json_png(truth_result, tmp_path):
    out = tmp_path / "evaluation"
    paths = write_outputs(truth_result, out, overwrite=False)
    assert set(paths) == {"per_case", "per_landmark", "summary", "report"}
    assert sorted(p.name for p in out.iterdir()) == ["per_case.csv", "per_landmark.csv", "report.png", "summary.json"]

    with open(paths["per_case"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case"] for row in rows] == list(CASES)
    assert float(rows[0]["dice_after"]) == pytest.approx(truth_result.rows[0]["dice_after"])
    metric_columns = [c for c in rows[0] if c not in ("case", "prediction", "num_landmarks")]
    for column in metric_columns:
        stem = column.replace("_before", "").replace("_after", "")
        assert stem in UNITLESS or stem.endswith(("_mm", "_vox")), column
    with open(paths["per_landmark"], newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(truth_result.landmark_rows)

    summary = json.loads(paths["summary"].read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    for phase in ("before", "after"):
        for key in summary[phase]:
            assert key in UNITLESS or key.endswith(("_mm", "_vox")), key
    keys = [path[-1] for path in _walk_keys(summary) if path[0] in ("before", "after")]
    assert "rtre_mm" in keys and "rdsc" in keys and "landmark_tre_mm" in keys

    image = imread(paths["report"])
    assert image.ndim == 3 and image.shape[0] > 400 and image.shape[1] > 800
    with pytest.raises(OutputExistsError):
        write_outputs(truth_result, out, overwrite=False)
    assert len(list(out.iterdir())) == 4  # nothing half-written left behind
    assert write_outputs(truth_result, out, overwrite=True) == paths


def test_registration_report_without_landmarks_or_montages(tmp_path):
    rows = [{"case": "a", "dice_before": 0.5, "dice_after": float("nan")}]
    path = write_registration_report_png(tmp_path / "r.png", rows, [])
    assert imread(path).ndim == 3


def test_segmentation_with_ground_truth_as_prediction(dataset, tmp_path):
    for name in CASES[:2]:
        shutil.copy(dataset / "fixed_tumour_labels" / f"{name}.nii.gz", tmp_path / f"{name}.nii.gz")
    label = read_label(dataset / "fixed_tumour_labels" / f"{CASES[2]}.nii.gz")
    n_lesions = int(sitk.GetArrayViewFromImage(label).max())
    write_seg_nrrd(label, tmp_path / f"{CASES[2]}.seg.nrrd", default_segments(n_lesions))
    result = evaluate_segmentation_dataset(dataset, tmp_path)
    assert [row["case"] for row in result.rows] == list(CASES)
    assert result.rows[2]["prediction"] == f"{CASES[2]}.seg.nrrd"
    for row in result.rows:
        assert row["dice"] == 1.0 and row["hd95_mm"] == 0.0 and row["volume_difference_ml"] == 0.0
    assert result.summary["structures"]["foreground"]["dice"] == {"mean": 1.0, "std": 0.0, "median": 1.0, "n": 3}
    paths = write_outputs(result, tmp_path / "out", overwrite=False)
    assert imread(paths["report"]).ndim == 3

    zones = evaluate_segmentation_dataset(dataset, tmp_path, label_folder="fixed_zone_labels", label_values=[1, 2])
    assert {row["structure"] for row in zones.rows} == {"label_1", "label_2"}
    (tmp_path / f"{CASES[1]}.nii.gz").unlink()
    with pytest.raises(InputError, match=f"no segmentation for case {CASES[1]}"):
        evaluate_segmentation_dataset(dataset, tmp_path)


def test_detection_equals_picai_eval(dataset, tmp_path):
    from picai_eval import evaluate

    maps, labels, glands = tmp_path / "maps", tmp_path / "labels", tmp_path / "glands"
    for folder in (maps, labels, glands):
        folder.mkdir()
    confidences = {"obs000": 0.9, "obs001": 0.3, "obs002": 0.6}
    y_det, y_true, grids = [], [], []
    for name, confidence in confidences.items():
        label = read_label(dataset / "fixed_tumour_labels" / f"{name}.nii.gz")
        grids.append(label)
        lesion = sitk.GetArrayFromImage(label) > 0
        y_det.append(np.where(lesion, confidence, 0.0).astype(np.float32))
        y_true.append(lesion.astype(np.int32))
        shutil.copy(dataset / "fixed_labels" / f"{name}.nii.gz", glands / f"{name}.nii.gz")
    # a case without lesion and with a false candidate of confidence 0.7, on the grid of obs000
    reference = read_label(dataset / "fixed_tumour_labels" / "obs000.nii.gz")
    false_candidate = np.zeros(y_det[0].shape, np.float32)
    false_candidate[20:24, 20:24, 20:24] = 0.7
    y_det.append(false_candidate)
    y_true.append(np.zeros(false_candidate.shape, np.int32))
    grids.append(reference)
    shutil.copy(dataset / "fixed_labels" / "obs000.nii.gz", glands / "neg000.nii.gz")
    for name, det, true, grid in zip([*confidences, "neg000"], y_det, y_true, grids):
        for array, folder in ((det, maps), (true.astype(np.uint8), labels)):
            image = sitk.GetImageFromArray(array)
            image.CopyInformation(grid)
            sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))

    expected = evaluate(y_det=y_det, y_true=y_true, num_parallel_calls=1)
    result = evaluate_detection_dataset(maps, labels, glands=glands, threshold=0.5)
    picai = result.summary["picai"]
    assert picai["auroc"] == pytest.approx(expected.auroc)
    assert picai["ap"] == pytest.approx(expected.AP)
    assert picai["picai_score"] == pytest.approx(expected.score)
    assert picai["num_cases"] == 4 and picai["num_lesions"] == expected.num_lesions
    rows = {row["case"]: row for row in result.rows}
    assert [rows[n]["patient_outcome"] for n in ("obs000", "obs001", "obs002")] == ["tp", "fn", "tp"]
    assert rows["obs001"]["fn"] == 1 and rows["neg000"]["reference_positive"] == 0
    lesion_level = result.summary["lesion_level"]
    assert (lesion_level["tp"], lesion_level["fn"]) == (2, 1)
    assert result.summary["patient_level"]["sensitivity"] == pytest.approx(2 / 3)
    paths = write_outputs(result, tmp_path / "out", overwrite=False)
    assert imread(paths["report"]).ndim == 3

    pi_cai_only = evaluate_detection_dataset(maps, labels)
    assert pi_cai_only.summary["picai"] == picai and "lesion_level" not in pi_cai_only.summary
    with pytest.raises(InputError, match="threshold"):
        evaluate_detection_dataset(maps, labels, glands=glands, threshold=0.0)
    (maps / "obs001.nii.gz").unlink()
    with pytest.raises(InputError, match="no detection map for case obs001"):
        evaluate_detection_dataset(maps, labels)
