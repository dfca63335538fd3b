"""``register --dataset``: every case of a dataset registered into one folder of CASE.tfm|h5 transforms.

Oracles: the phantoms' ground-truth correspondences (landmark TRE read back by ``evaluate registration``, which
reads the folder as its ``--predictions``), the same model run one case per batch (batching must not change a
case's transform), and the files left behind when a case fails or an option is misplaced.
"""

import csv
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from MRITRUSFusionLib.cli import main
from MRITRUSFusionLib.registration.learned.models import available_methods

CASES = ["case000", "case001", "case002"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    assert main(["--progress", "none", "phantom", "--out", str(root), "--cases", str(len(CASES)), "--seed", "5"]) == 0
    return root


def register(*arguments: str) -> int:
    return main(["--progress", "none", "register", "--device", "cpu", *arguments])


def mapped_points(path, points: np.ndarray) -> np.ndarray:
    transform = sitk.ReadTransform(str(path))
    return np.array([transform.TransformPoint(point.tolist()) for point in points])


def test_gland_driven_dataset_registration_recovers_the_phantom_landmarks(dataset, tmp_path, capsys, ascii_locale):
    """Also under an ASCII locale: the evaluation's summary.json holds non-ASCII text (μ-RegPro)."""
    out = tmp_path / "transforms"
    assert register("--dataset", str(dataset), "--gland-masks", "--method", "affine", "--transform-out", str(out),
                    "--warped-out", str(tmp_path / "warped")) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["registered"] == len(CASES)
    assert sorted(path.name for path in out.iterdir()) == [f"{name}.tfm" for name in CASES]
    assert sorted(path.name for path in (tmp_path / "warped").iterdir()) == [f"{name}.nii.gz" for name in CASES]
    evaluation = tmp_path / "evaluation"
    assert main(["--progress", "none", "evaluate", "registration", "--dataset", str(dataset), "--predictions", str(out),
                 "--out", str(evaluation)]) == 0
    with open(evaluation / "per_case.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case"] for row in rows] == CASES
    assert all(float(row["tre_mean_after_mm"]) < 1.5 < 5.0 < float(row["tre_mean_before_mm"]) for row in rows)


@pytest.mark.parametrize("method", ["globalnet", "ecmca-lstm"])
def test_batching_learned_models_leaves_each_case_unchanged(dataset, tmp_path, method):
    if method not in available_methods():
        pytest.skip(f"no {method} weights here")
    suffix = ".tfm" if method == "globalnet" else ".h5"
    for batch in ("1", "3"):
        assert register("--dataset", str(dataset), "--method", method, "--batch-size", batch,
                        "--transform-out", str(tmp_path / batch)) == 0
    grid = sitk.ReadImage(str(dataset / "fixed_images" / "case001.nii.gz"))
    size = np.array(grid.GetSize())
    points = np.array([grid.TransformContinuousIndexToPhysicalPoint((size * f).tolist()) for f in
                       ([0.3, 0.4, 0.5], [0.5, 0.5, 0.5], [0.6, 0.7, 0.4])])
    for name in CASES:
        one, three = (mapped_points(tmp_path / batch / f"{name}{suffix}", points) for batch in ("1", "3"))
        assert np.abs(one - points).max() > 0.1  # the model moved them
        np.testing.assert_allclose(three, one, atol=1e-3)


def test_a_failed_case_is_named_and_the_others_are_written(dataset, tmp_path, capsys):
    broken = tmp_path / "data"
    shutil.copytree(dataset, broken)
    (broken / "moving_images" / "case001.nii.gz").write_bytes(b"not an image")
    out = tmp_path / "transforms"
    assert register("--dataset", str(broken), "--method", "rigid", "--gland-masks", "--transform-out", str(out)) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "1 of 3" in error and "case001" in error
    assert sorted(path.name for path in out.iterdir()) == ["case000.tfm", "case002.tfm"]


def test_existing_outputs_stop_the_run_before_any_work(dataset, tmp_path, capsys):
    out = tmp_path / "transforms"
    out.mkdir()
    (out / "case002.tfm").write_text("keep me")
    assert register("--dataset", str(dataset), "--method", "rigid", "--transform-out", str(out)) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == ["case002.tfm"]
    assert (out / "case002.tfm").read_text() == "keep me"


@pytest.mark.parametrize("arguments, named", [
    (["--gland-masks"], "--gland-masks"),
    (["--cases", "case000..case001"], "--cases"),
    (["--batch-size", "2"], "--batch-size"),
])
def test_dataset_options_are_refused_for_one_pair(dataset, tmp_path, capsys, arguments, named):
    fixed, moving = (str(dataset / folder / "case000.nii.gz") for folder in ("fixed_images", "moving_images"))
    assert register("--fixed", fixed, "--moving", moving, "--method", "rigid", "--transform-out",
                    str(tmp_path / "T.tfm"), *arguments) == 1
    assert named in capsys.readouterr().err
    assert not (tmp_path / "T.tfm").exists()


@pytest.mark.parametrize("arguments, named", [
    (["--fixed", "x.nii.gz"], "--fixed"),
    (["--batch-size", "0"], "--batch-size"),
    (["--cases", "case000..case009"], "no case(s) case003"),
    (["--weights", "w.pt"], "--weights"),
])
def test_dataset_mode_refuses_bad_options_before_any_work(dataset, tmp_path, capsys, arguments, named):
    out = tmp_path / "transforms"
    assert register("--dataset", str(dataset), "--method", "rigid", "--transform-out", str(out), *arguments) == 1
    assert named in capsys.readouterr().err
    assert not out.exists()
