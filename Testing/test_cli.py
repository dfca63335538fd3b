"""The ``mritrus-fusion`` command: contract direction of written transforms (checked with SimpleITK alone),
warping against SimpleITK, point mapping, and one clear error line with no partial output on bad inputs."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from MRITRUSFusionLib.cli import main
from MRITRUSFusionLib.phantom import generate_phantom


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    assert main(["--progress", "none", "phantom", "--out", str(root), "--cases", "1", "--seed", "2"]) == 0
    return root


def files(root, name="case000"):
    return {folder: str(root / folder / f"{name}.nii.gz") for folder in
            ("fixed_images", "moving_images", "fixed_labels", "moving_labels")}


def landmark_centroids(path):
    """Centroids (LPS mm) of channels 1.. of a 4D label file, computed with SimpleITK only."""
    image = sitk.ReadImage(path)
    centroids = []
    for channel in range(1, image.GetSize()[3]):
        mask = sitk.Extract(image, list(image.GetSize()[:3]) + [0], [0, 0, 0, channel]) > 0
        stats = sitk.LabelShapeStatisticsImageFilter()
        stats.Execute(mask)
        centroids.append(stats.GetCentroid(1))
    return np.array(centroids)


def test_phantom_command_writes_deepreg_layout_and_ground_truth(phantom_dir):
    paths = files(phantom_dir)
    assert sitk.ReadImage(paths["fixed_labels"]).GetDimension() == 4
    truth = sitk.ReadTransform(str(phantom_dir / "transforms" / "case000.h5"))
    fixed, moving = landmark_centroids(paths["fixed_labels"]), landmark_centroids(paths["moving_labels"])
    mapped = np.array([truth.TransformPoint(p.tolist()) for p in fixed])
    assert np.linalg.norm(mapped - moving, axis=1).max() < 0.5


def test_register_writes_transform_in_contract_direction(phantom_dir, tmp_path):
    """sitk.ReadTransform(T) carries a TRUS landmark onto the MRI landmark (independent of the library)."""
    paths = files(phantom_dir)
    transform_path, warped_path = tmp_path / "T.tfm", tmp_path / "mri_in_trus.nii.gz"
    code = main(["--progress", "none", "register", "--fixed", paths["fixed_images"], "--moving", paths["moving_images"],
                 "--fixed-mask", paths["fixed_labels"], "--moving-mask", paths["moving_labels"], "--method", "affine",
                 "--transform-out", str(transform_path), "--warped-out", str(warped_path)])
    assert code == 0
    transform = sitk.ReadTransform(str(transform_path))
    fixed, moving = landmark_centroids(paths["fixed_labels"]), landmark_centroids(paths["moving_labels"])
    before = np.linalg.norm(fixed - moving, axis=1).mean()
    after = np.linalg.norm(np.array([transform.TransformPoint(p.tolist()) for p in fixed]) - moving, axis=1).mean()
    assert before > 5.0 and after < 1.0
    warped, trus = sitk.ReadImage(str(warped_path)), sitk.ReadImage(paths["fixed_images"])
    oracle = sitk.Resample(sitk.ReadImage(paths["moving_images"]), trus, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    assert warped.GetSize() == trus.GetSize()
    np.testing.assert_allclose(warped.GetOrigin(), trus.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(sitk.GetArrayFromImage(warped), sitk.GetArrayFromImage(oracle), atol=1e-4)


def test_map_points_and_evaluate_with_ground_truth(phantom_dir, tmp_path):
    paths = files(phantom_dir)
    truth = str(phantom_dir / "transforms" / "case000.h5")
    moving = landmark_centroids(paths["moving_labels"])
    lines = ["label,x,y,z"] + [f"t{i},{x},{y},{z}" for i, (x, y, z) in enumerate(moving)]
    (tmp_path / "mri.csv").write_text("\n".join(lines) + "\n")
    assert main(["map-points", "--points", str(tmp_path / "mri.csv"), "--transform", truth,
                 "--out", str(tmp_path / "trus.mrk.json")]) == 0
    markups = json.loads((tmp_path / "trus.mrk.json").read_text())["markups"][0]
    positions = np.array([p["position"] for p in markups["controlPoints"]])
    if markups.get("coordinateSystem") == "RAS":
        positions *= [-1, -1, 1]
    np.testing.assert_allclose(positions, landmark_centroids(paths["fixed_labels"]), atol=0.3)

    assert main(["evaluate", "registration", "--fixed-label", paths["fixed_labels"], "--moving-label",
                 paths["moving_labels"], "--transform", truth, "--out", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["tre_mean_mm"] < 0.3 and metrics["before"]["tre_mean_mm"] > 5.0
    assert metrics["dice"] > 0.95 and "folding_fraction" in metrics


def write(image, path):
    sitk.WriteImage(image, str(path))
    return str(path)


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    case = generate_phantom(seed=0, trus_size=(48, 48, 48), trus_spacing=(1.6, 1.6, 1.6))
    good = write(case.trus, root / "trus.nii.gz")
    nan = sitk.GetArrayFromImage(case.trus)
    nan[5, 5, 5] = np.nan
    nan_image = sitk.GetImageFromArray(nan)
    nan_image.CopyInformation(case.trus)
    empty = sitk.Image(case.trus.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(case.trus)
    return {
        "good": good,
        "mask": write(case.trus_labels[0], root / "mask.nii.gz"),
        "2d": write(sitk.Image([32, 32], sitk.sitkFloat32), root / "flat.nii.gz"),
        "4d": write(sitk.JoinSeries([case.trus, case.trus]), root / "four.nii.gz"),
        "nan": write(nan_image, root / "nan.nii.gz"),
        "empty": write(empty, root / "empty.nii.gz"),
        "not_transform": good,
        "missing": str(root / "missing.nii.gz"),
    }


@pytest.mark.parametrize("fixed,moving,fixed_mask,expected", [
    ("missing", "good", None, "--fixed"),
    ("2d", "good", None, "--fixed"),
    ("good", "4d", None, "--moving"),
    ("nan", "good", None, "--fixed"),
    ("good", "good", "empty", "--fixed-mask"),
])
def test_register_bad_inputs_give_one_error_line_and_no_output(bad_inputs, tmp_path, capsys, fixed, moving,
                                                              fixed_mask, expected):
    out = tmp_path / "T.tfm"
    argv = ["register", "--fixed", bad_inputs[fixed], "--moving", bad_inputs[moving], "--method", "rigid",
            "--transform-out", str(out)]
    if fixed_mask:
        argv += ["--fixed-mask", bad_inputs[fixed_mask], "--moving-mask", bad_inputs["mask"]]
    assert main(argv) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and expected in error[0]
    assert list(tmp_path.iterdir()) == []


def test_warp_with_a_non_transform_file_fails_cleanly(bad_inputs, tmp_path, capsys):
    out = tmp_path / "w.nii.gz"
    code = main(["warp", "--moving", bad_inputs["good"], "--reference", bad_inputs["good"],
                 "--transform", bad_inputs["not_transform"], "--out", str(out)])
    assert code == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--transform" in error[0]
    assert list(tmp_path.iterdir()) == []


def test_deformable_transform_refused_as_tfm(phantom_dir, tmp_path, capsys):
    paths = files(phantom_dir)
    code = main(["--progress", "none", "register", "--fixed", paths["fixed_images"], "--moving", paths["moving_images"],
                 "--fixed-mask", paths["fixed_labels"], "--moving-mask", paths["moving_labels"], "--method", "bspline",
                 "--transform-out", str(tmp_path / "T.tfm")])
    assert code == 1 and ".h5" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(bad_inputs, tmp_path, capsys):
    out = tmp_path / "w.nii.gz"
    out.write_text("keep me")
    code = main(["warp", "--moving", bad_inputs["good"], "--reference", bad_inputs["good"],
                 "--transform", str(write_identity(tmp_path)), "--out", str(out)])
    assert code == 1 and "--overwrite" in capsys.readouterr().err
    assert out.read_text() == "keep me"


def write_identity(folder):
    path = folder / "identity.tfm"
    sitk.WriteTransform(sitk.AffineTransform(3), str(path))
    return path


def test_evaluate_registration_dataset_with_ground_truth_predictions(phantom_dir, tmp_path):
    """--dataset mode: the phantom's own ground-truth transforms as predictions give near-zero TRE."""
    out = tmp_path / "evaluation"
    assert main(["--progress", "none", "evaluate", "registration", "--dataset", str(phantom_dir), "--predictions",
                 str(phantom_dir / "transforms"), "--cases", "case000..case000", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_cases"] == 1
    assert summary["after"]["tre_mean_mm"]["median"] < 0.3 < 5.0 < summary["before"]["tre_mean_mm"]["median"]
    assert (out / "report.png").stat().st_size > 0 and (out / "per_case.csv").read_text().count("\n") == 2


def test_evaluate_needs_the_options_of_its_mode(tmp_path, capsys):
    assert main(["evaluate", "registration", "--out", str(tmp_path / "m.json")]) == 1
    assert "--fixed-label" in capsys.readouterr().err
    assert main(["evaluate", "segmentation", "--dataset", str(tmp_path), "--out", str(tmp_path / "e")]) == 1
    assert "--predictions" in capsys.readouterr().err


def test_register_attention_reg_writes_a_rigid_transform(phantom_dir, tmp_path):
    paths = files(phantom_dir)
    out = tmp_path / "T.tfm"
    assert main(["--progress", "none", "register", "--fixed", paths["fixed_images"], "--moving", paths["moving_images"],
                 "--method", "attention-reg", "--device", "cpu", "--transform-out", str(out)]) == 0
    transform = sitk.ReadTransform(str(out))
    matrix = np.array(sitk.AffineTransform(transform).GetMatrix() if transform.GetName() == "AffineTransform"
                      else transform.Downcast().GetMatrix()).reshape(3, 3)
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(3), atol=1e-6)  # rigid: a rotation
