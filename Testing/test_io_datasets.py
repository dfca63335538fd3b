"""Dataset layouts: DeepReg paired, μ-RegPro, CSV manifest, and autodetection."""

from pathlib import Path

import pytest

from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.io import Case, deepreg_paired_cases, manifest_cases, muregpro_cases, open_dataset

MRUS_EXAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mrus-example"


def touch(root: Path, *relative: str) -> None:
    for name in relative:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()


def test_deepreg_layout_with_optional_labels_and_extras(tmp_path):
    touch(tmp_path, "fixed_images/obs001.nii.gz", "fixed_images/obs000.nii.gz", "fixed_images/.DS_Store",
          "moving_images/obs000.nii.gz", "moving_images/obs001.nii.gz", "fixed_labels/obs000.nii.gz",
          "moving_labels/obs000.nii.gz", "moving_labels/obs001.nii.gz", "transforms/obs000.h5", "README.md")
    cases = deepreg_paired_cases(tmp_path)
    assert cases == [
        Case("obs000", tmp_path / "fixed_images/obs000.nii.gz", tmp_path / "moving_images/obs000.nii.gz",
             tmp_path / "fixed_labels/obs000.nii.gz", tmp_path / "moving_labels/obs000.nii.gz",
             {"transforms": tmp_path / "transforms/obs000.h5"}),
        Case("obs001", tmp_path / "fixed_images/obs001.nii.gz", tmp_path / "moving_images/obs001.nii.gz",
             None, tmp_path / "moving_labels/obs001.nii.gz", {}),
    ]
    assert open_dataset(tmp_path) == cases


def test_deepreg_layout_errors(tmp_path):
    touch(tmp_path, "fixed_images/a.nii.gz", "fixed_images/b.nii.gz", "moving_images/a.nii.gz")
    with pytest.raises(InputError, match="case.* b lack"):
        deepreg_paired_cases(tmp_path)
    touch(tmp_path, "moving_images/b.nii", "moving_images/b.nii.gz")
    with pytest.raises(InputError, match="two files for case b"):
        deepreg_paired_cases(tmp_path)
    with pytest.raises(InputError, match="only the μ-RegPro layout has splits"):
        open_dataset(tmp_path, split="train")


def test_muregpro_layout_us_fixed_mr_moving(tmp_path):
    for split, names in {"train": ["case000002", "case000001"], "val": ["case000010"]}.items():
        for name in names:
            touch(tmp_path, *(f"{split}/{folder}/{name}.nii.gz"
                              for folder in ("us_images", "mr_images", "us_labels", "mr_labels")))
    train = muregpro_cases(tmp_path, "train")
    assert [c.name for c in train] == ["case000001", "case000002"]
    assert train[0].fixed_image == tmp_path / "train/us_images/case000001.nii.gz"
    assert train[0].moving_image == tmp_path / "train/mr_images/case000001.nii.gz"
    assert train[0].fixed_label == tmp_path / "train/us_labels/case000001.nii.gz"
    assert train[0].moving_label == tmp_path / "train/mr_labels/case000001.nii.gz"
    assert open_dataset(tmp_path, split="val") == muregpro_cases(tmp_path, "val")
    assert [c.name for c in open_dataset(tmp_path)] == ["case000001", "case000002", "case000010"]
    with pytest.raises(InputError, match="unknown split 'test'"):
        open_dataset(tmp_path, split="test")


def test_manifest_resolves_relative_paths_and_extras(tmp_path):
    touch(tmp_path, "data/trus.nii.gz", "data/mri.nii.gz", "data/mri_gland.nii.gz", "data/targets.mrk.json")
    elsewhere = tmp_path / "abs" / "trus2.nrrd"
    touch(tmp_path, "abs/trus2.nrrd", "data/mri2.nrrd")
    manifest = tmp_path / "data" / "cases.csv"
    manifest.write_text("name,fixed_image,moving_image,moving_label,targets\n"
                        "p1,trus.nii.gz,mri.nii.gz,mri_gland.nii.gz,targets.mrk.json\n"
                        f"p2,{elsewhere},mri2.nrrd,,\n")
    data = tmp_path / "data"
    assert manifest_cases(manifest) == [
        Case("p1", data / "trus.nii.gz", data / "mri.nii.gz", None, data / "mri_gland.nii.gz",
             {"targets": data / "targets.mrk.json"}),
        Case("p2", elsewhere, data / "mri2.nrrd", None, None, {}),
    ]
    assert open_dataset(manifest) == manifest_cases(manifest)


@pytest.mark.parametrize("content, problem", [
    ("name,fixed_image\np1,trus.nii.gz\n", "missing column"),
    ("name,fixed_image,moving_image\np1,trus.nii.gz,absent.nii.gz\n", "row 2, moving_image: .*absent.nii.gz"),
    ("name,fixed_image,moving_image\np1,trus.nii.gz,\n", "row 2: empty moving_image"),
    ("name,fixed_image,moving_image\np1,trus.nii.gz,trus.nii.gz\np1,trus.nii.gz,trus.nii.gz\n", "repeated name"),
])
def test_manifest_errors(tmp_path, content, problem):
    touch(tmp_path, "trus.nii.gz")
    manifest = tmp_path / "m.csv"
    manifest.write_text(content)
    with pytest.raises(InputError, match=problem) as error:
        manifest_cases(manifest)
    assert str(manifest) in str(error.value)


def test_open_dataset_unknown_layouts(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        open_dataset(tmp_path / "absent")
    with pytest.raises(InputError, match="unknown layout"):
        open_dataset(tmp_path)


@pytest.mark.skipif(not MRUS_EXAMPLE.is_dir(), reason=f"shared data not present at {MRUS_EXAMPLE}")
def test_mrus_example_is_a_deepreg_dataset():
    cases = open_dataset(MRUS_EXAMPLE)
    assert [c.name for c in cases] == [f"obs{i:03d}" for i in range(108)]
    assert all(c.fixed_label and c.moving_label and c.fixed_label.is_file() for c in cases)
