"""``mritrus-fusion demo`` end to end on the built-in phantom: every contract output exists and is right,
checked with SimpleITK and the phantom's ground truth rather than the library's own report."""

import json

import matplotlib.image
import numpy as np
import pytest
import SimpleITK as sitk

from MRITRUSFusionLib.cli import main
from MRITRUSFusionLib.io import read_seg_nrrd
from MRITRUSFusionLib.metrics.landmarks import centroids_mm
from MRITRUSFusionLib.phantom import generate_phantom


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["--progress", "none", "demo", "--out", str(out), "--device", "cpu"]) == 0
    return out


def test_report_meets_the_contract_and_the_accuracy_goal(demo):
    report = json.loads((demo / "report.json").read_text())
    registration = report["registration"]
    assert registration["tre_before_mm"] >= 5.0
    assert registration["tre_after_mm"] <= 1.0
    assert registration["dice_after"] > registration["dice_before"]
    assert 0.0 <= report["segmentation"]["dice"] <= 1.0
    assert report["timings_s"]["total"] > 0


def test_transform_file_carries_trus_landmarks_onto_mri_landmarks(demo):
    """Independent of the report: the written transform, read by SimpleITK, applied to the phantom's TRUS
    landmark centroids, lands near its MRI landmark centroids."""
    case = generate_phantom(seed=0)
    transform = sitk.ReadTransform(str(demo / "transform.h5"))
    fixed, moving = centroids_mm(case.trus_labels[1:]), centroids_mm(case.mri_labels[1:])
    mapped = np.array([transform.TransformPoint(p.tolist()) for p in fixed])
    assert np.linalg.norm(mapped - moving, axis=1).mean() <= 1.0


def test_warped_mri_and_segmentation_are_on_the_trus_grid(demo):
    trus = generate_phantom(seed=0).trus
    warped = sitk.ReadImage(str(demo / "mri_in_trus.nii.gz"))
    segmentation, segments = read_seg_nrrd(demo / "tumor_seg.seg.nrrd")
    for image in (warped, segmentation):
        assert image.GetSize() == trus.GetSize()
        np.testing.assert_allclose(image.GetOrigin(), trus.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(image.GetSpacing(), trus.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(image.GetDirection(), trus.GetDirection(), atol=1e-6)
    assert [s.name for s in segments] == ["tumour"]
    png = matplotlib.image.imread(demo / "overlay.png")
    assert png.ndim == 3 and png.shape[0] > 200


def test_second_run_needs_overwrite(demo, capsys):
    assert main(["--progress", "none", "demo", "--out", str(demo)]) == 1
    assert "--overwrite" in capsys.readouterr().err
