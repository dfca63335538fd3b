"""Volumes, label channels, label maps, Slicer segmentations and atomic writing of MRITRUSFusionLib.io.

Geometry is checked against the numbers the test images are built from and, on disk, against independent
readers (nibabel for NIfTI, pynrrd for NRRD), never only against the library's own reader.
"""

import json
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk

from MRITRUSFusionLib.errors import InputError, OutputExistsError
from MRITRUSFusionLib.io import (
    Segment, check_volume, default_segments, read_label, read_label_channels, read_seg_nrrd, read_transform,
    read_points, read_volume, write_json, write_label, write_label_channels, write_points, write_seg_nrrd,
    write_volume,
)
from MRITRUSFusionLib.io import volumes as volumes_module

MRUS_EXAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mrus-example"
SIZE = (13, 11, 9)
SPACING = (0.7, 1.3, 2.1)
ORIGIN = (-12.5, 40.25, 103.75)
TOL_MM = 1e-4


def rotation(axis=(1.0, 2.0, 3.0), angle=0.5) -> np.ndarray:
    """A proper oblique rotation matrix (Rodrigues), det +1, no axis-aligned column."""
    k = np.asarray(axis) / np.linalg.norm(axis)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


DIRECTION = rotation()


def oblique_image(voxels: np.ndarray) -> sitk.Image:
    """``voxels`` indexed (z, y, x) on the oblique, anisotropic test grid."""
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION.ravel().tolist())
    return image


def random_voxels(dtype=np.float32, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-100, 300, SIZE[::-1]).astype(dtype)


def random_mask(seed) -> np.ndarray:
    return (np.random.default_rng(seed).random(SIZE[::-1]) > 0.6).astype(np.uint8)


def assert_test_grid(image: sitk.Image) -> None:
    assert image.GetSize() == SIZE
    np.testing.assert_allclose(image.GetSpacing(), SPACING, atol=TOL_MM)
    np.testing.assert_allclose(image.GetOrigin(), ORIGIN, atol=TOL_MM)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), DIRECTION, atol=TOL_MM)


def lps_affine() -> np.ndarray:
    """Voxel (i, j, k) -> LPS mm of the test grid, built from the numbers, not from an image."""
    affine = np.eye(4)
    affine[:3, :3] = DIRECTION * np.asarray(SPACING)
    affine[:3, 3] = ORIGIN
    return affine


def nibabel_lps_affine(path: Path) -> np.ndarray:
    """nibabel's voxel -> RAS affine turned into voxel -> LPS (negate x and y)."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ nib.load(str(path)).affine


# --------------------------------------------------------------------------------------------- volumes


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_volume_round_trip_keeps_oblique_geometry_and_voxels(tmp_path, suffix):
    voxels = random_voxels()
    path = write_volume(oblique_image(voxels), tmp_path / f"vol{suffix}")
    image = read_volume(path)
    assert_test_grid(image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), voxels)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_on_disk_matches_nibabel(tmp_path, suffix):
    voxels = random_voxels()
    path = write_volume(oblique_image(voxels), tmp_path / f"vol{suffix}")
    np.testing.assert_allclose(nibabel_lps_affine(path), lps_affine(), atol=TOL_MM)
    np.testing.assert_array_equal(np.asarray(nib.load(str(path)).dataobj), voxels.transpose(2, 1, 0))


def test_nrrd_on_disk_matches_pynrrd(tmp_path):
    voxels = random_voxels()
    data, header = nrrd.read(str(write_volume(oblique_image(voxels), tmp_path / "vol.nrrd")))
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_allclose(header["space directions"], lps_affine()[:3, :3].T, atol=TOL_MM)
    np.testing.assert_allclose(header["space origin"], ORIGIN, atol=TOL_MM)
    np.testing.assert_array_equal(data, voxels.transpose(2, 1, 0))


def write_dicom_series(voxels: np.ndarray, folder: Path) -> None:
    """One DICOM file per slice; the geometry goes into ImagePositionPatient/Orientation, PixelSpacing."""
    folder.mkdir()
    volume = oblique_image(voxels)
    orientation = DIRECTION[:, 0].tolist() + DIRECTION[:, 1].tolist()  # row and column directions
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(SIZE[2]):
        slice_ = volume[:, :, k]
        tags = {"0008|0060": "MR", "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
                "0020|000e": "1.2.826.0.1.3680043.2.1125.1.2", "0008|0018": f"1.2.826.0.1.3680043.2.1125.1.3.{k}",
                "0020|0013": str(k + 1), "0018|0050": str(SPACING[2]),
                "0020|0032": "\\".join(f"{v:.8f}" for v in volume.TransformIndexToPhysicalPoint((0, 0, k))),
                "0020|0037": "\\".join(f"{v:.8f}" for v in orientation),
                "0028|0030": f"{SPACING[1]}\\{SPACING[0]}"}
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_)


def test_dicom_series_folder_reads_with_oblique_geometry(tmp_path):
    voxels = np.random.default_rng(3).integers(-500, 1500, SIZE[::-1]).astype(np.int16)
    write_dicom_series(voxels, tmp_path / "series")
    image = read_volume(tmp_path / "series", pixel_type=sitk.sitkInt16)
    assert_test_grid(image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), voxels)


def test_read_volume_casts_to_pixel_type(tmp_path):
    path = write_volume(oblique_image(random_voxels(np.int16)), tmp_path / "v.nii.gz")
    assert read_volume(path, pixel_type=sitk.sitkFloat64).GetPixelID() == sitk.sitkFloat64


def write_zero_spacing_nrrd(path: Path) -> Path:
    header = {"space": "left-posterior-superior", "space directions": np.diag([1.0, 0.0, 1.0]),
              "space origin": np.zeros(3), "kinds": ["domain"] * 3}
    nrrd.write(str(path), np.zeros((4, 5, 6), np.float32), header)
    return path


def write_with_sitk(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("make, problem", [
    (lambda d: d / "absent.nii.gz", "no such file"),
    (lambda d: write_with_sitk(sitk.Image([8, 9], sitk.sitkFloat32), d / "flat.nii.gz"), "got 2D (8×9)"),
    (lambda d: write_with_sitk(sitk.Image([8, 9, 5, 2], sitk.sitkFloat32), d / "four.nii.gz"), "got 4D (8×9×5×2)"),
    (lambda d: write_with_sitk(sitk.Image([8, 9, 5], sitk.sitkVectorFloat32, 3), d / "rgb.mha"), "3 components"),
    (lambda d: write_with_sitk(oblique_image(np.full(SIZE[::-1], np.nan, np.float32)), d / "nan.nrrd"),
     "NaN or Inf"),
    (lambda d: write_with_sitk(oblique_image(np.full(SIZE[::-1], np.inf, np.float32)), d / "inf.nii.gz"),
     "NaN or Inf"),  # ITK's NIfTI reader alone would turn these into 0
    (lambda d: write_zero_spacing_nrrd(d / "zero.nrrd"), "spacing"),
    (lambda d: (d / "text.nii.gz").write_text("not an image") and d / "text.nii.gz", "cannot read"),
    (lambda d: (d / "empty_folder").mkdir() or d / "empty_folder", "no DICOM series"),
])
def test_read_volume_bad_input_names_path_and_problem(tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(InputError) as error:
        read_volume(path, name="fixed image")
    assert str(path) in str(error.value) and problem in str(error.value)
    assert "\n" not in str(error.value)


def test_check_volume_in_memory():
    with pytest.raises(InputError, match="moving image: expected a 3D volume, got 2D"):
        check_volume(sitk.Image([4, 4], sitk.sitkFloat32), "moving image")
    image = oblique_image(random_voxels())
    image[2, 3, 4] = float("inf")
    with pytest.raises(InputError, match="moving image: contains NaN or Inf"):
        check_volume(image, "moving image")
    fine = oblique_image(random_voxels())
    assert check_volume(fine, "x") is fine


@pytest.mark.parametrize("name", ["out.png", "out.nhdr", "folder"])
def test_write_volume_rejects_unknown_targets(tmp_path, name):
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match=name):
        write_volume(oblique_image(random_voxels()), tmp_path / name)


# ------------------------------------------------------------------------------------- atomic writing


def test_failed_write_leaves_previous_file_and_no_partial_file(tmp_path, monkeypatch):
    target = write_volume(oblique_image(random_voxels(seed=1)), tmp_path / "v.nii.gz")
    before = target.read_bytes()

    def crash_midway(image, path, *args):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(volumes_module.sitk, "WriteImage", crash_midway)
    with pytest.raises(RuntimeError, match="disk full"):
        write_volume(oblique_image(random_voxels(seed=2)), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["v.nii.gz"]


def test_failed_first_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(volumes_module.sitk, "WriteImage", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        write_volume(oblique_image(random_voxels()), tmp_path / "v.nrrd")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_false_keeps_existing_file(tmp_path):
    target = write_volume(oblique_image(random_voxels(seed=1)), tmp_path / "v.mha")
    before = target.read_bytes()
    with pytest.raises(OutputExistsError, match="v.mha"):
        write_volume(oblique_image(random_voxels(seed=2)), target, overwrite=False)
    assert target.read_bytes() == before
    write_volume(oblique_image(random_voxels(seed=2)), target)
    assert target.read_bytes() != before


# ------------------------------------------------------------------------------------- label channels


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_label_channels_round_trip(tmp_path, suffix):
    masks = [random_mask(seed) for seed in range(3)]
    path = write_label_channels([oblique_image(m) for m in masks], tmp_path / f"labels{suffix}")
    channels = read_label_channels(path)
    assert len(channels) == 3
    for channel, mask in zip(channels, masks):
        assert channel.GetPixelID() == sitk.sitkUInt8
        assert_test_grid(channel)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(channel), mask)


def test_label_channels_nifti_is_4d_xyzc_on_disk(tmp_path):
    masks = [random_mask(seed) for seed in range(2)]
    path = write_label_channels([oblique_image(m) for m in masks], tmp_path / "labels.nii.gz")
    on_disk = nib.load(str(path))
    assert on_disk.shape == SIZE + (2,) and on_disk.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(on_disk.dataobj), np.stack([m.transpose(2, 1, 0) for m in masks], -1))
    np.testing.assert_allclose(nibabel_lps_affine(path), lps_affine(), atol=TOL_MM)


def test_float_4d_labels_threshold_at_half(tmp_path):
    values = np.random.default_rng(4).random((2,) + SIZE[::-1])
    image = sitk.JoinSeries([oblique_image(v) for v in values])
    channels = read_label_channels(write_volume(image, tmp_path / "soft.nii.gz"))
    for channel, soft in zip(channels, values):
        assert_test_grid(channel)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(channel), (soft > 0.5).astype(np.uint8))


def test_3d_label_file_gives_one_mask_or_split_channels(tmp_path):
    label_map = np.random.default_rng(5).integers(0, 4, SIZE[::-1]).astype(np.uint8)
    path = write_volume(oblique_image(label_map), tmp_path / "multi.nrrd")
    (mask,) = read_label_channels(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), (label_map > 0).astype(np.uint8))
    split = read_label_channels(path, split_labels=True)
    assert len(split) == 3
    for value, channel in enumerate(split, start=1):
        assert_test_grid(channel)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(channel), (label_map == value).astype(np.uint8))


def test_label_channels_must_share_a_grid(tmp_path):
    shifted = oblique_image(random_mask(1))
    shifted.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(InputError, match="channel 1 is not on the grid"):
        write_label_channels([oblique_image(random_mask(0)), shifted], tmp_path / "l.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_label_channels_bad_inputs(tmp_path):
    nan = np.zeros((2,) + SIZE[::-1], np.float32)
    nan[1, 0, 0, 0] = np.nan
    path = write_volume(sitk.JoinSeries([oblique_image(v) for v in nan]), tmp_path / "nan.nii.gz")
    with pytest.raises(InputError, match="NaN or Inf") as error:
        read_label_channels(path)
    assert str(path) in str(error.value)
    with pytest.raises(InputError, match="no such file"):
        read_label_channels(tmp_path / "absent.nii.gz")


@pytest.mark.skipif(not MRUS_EXAMPLE.is_dir(), reason=f"shared data not present at {MRUS_EXAMPLE}")
def test_mrus_example_label_channel_centroids_match_nibabel():
    path = MRUS_EXAMPLE / "fixed_labels" / "obs000.nii.gz"
    channels = read_label_channels(path)
    on_disk = nib.load(str(path))
    data = on_disk.get_fdata()
    assert len(channels) == data.shape[3] >= 2
    for c, channel in enumerate(channels):
        ijk = np.argwhere(data[..., c] > 0.5).mean(axis=0)
        expected_lps = (nibabel_lps_affine(path) @ np.append(ijk, 1.0))[:3]
        kji = np.argwhere(sitk.GetArrayViewFromImage(channel) > 0).mean(axis=0)
        centroid = channel.TransformContinuousIndexToPhysicalPoint(kji[::-1].tolist())
        np.testing.assert_allclose(centroid, expected_lps, atol=TOL_MM)


# ----------------------------------------------------------------------------------------- label maps


def test_label_map_round_trip_and_pixel_type(tmp_path):
    label_map = np.random.default_rng(6).integers(0, 5, SIZE[::-1]).astype(np.int32)
    image = read_label(write_label(oblique_image(label_map), tmp_path / "l.nii.gz"))
    assert image.GetPixelID() == sitk.sitkUInt8
    assert_test_grid(image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), label_map)
    big = read_label(write_label(oblique_image(label_map * 1000), tmp_path / "big.nrrd"))
    assert big.GetPixelID() == sitk.sitkUInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(big), label_map * 1000)


def test_label_map_rejects_non_integer_and_negative(tmp_path):
    soft = write_volume(oblique_image(np.full(SIZE[::-1], 0.5, np.float32)), tmp_path / "soft.nii.gz")
    with pytest.raises(InputError, match="non-integer") as error:
        read_label(soft)
    assert str(soft) in str(error.value)
    with pytest.raises(InputError, match="0..65535"):
        write_label(oblique_image(np.full(SIZE[::-1], -1, np.int16)), tmp_path / "neg.nii.gz")


# ----------------------------------------------------------------------------------- Slicer .seg.nrrd


def box_label_map() -> np.ndarray:
    """(z, y, x) label map: gland 1 in a box, lesion 2 in a smaller box at i 2..4, j 3..6, k 1..3."""
    voxels = np.zeros(SIZE[::-1], np.uint8)
    voxels[1:8, 1:10, 1:12] = 1
    voxels[1:4, 3:7, 2:5] = 2
    return voxels


def test_seg_nrrd_header_as_slicer_reads_it(tmp_path):
    voxels = box_label_map()
    path = write_seg_nrrd(oblique_image(voxels), tmp_path / "tumour.seg.nrrd", default_segments(1))
    data, header = nrrd.read(str(path))
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_allclose(header["space directions"], lps_affine()[:3, :3].T, atol=1e-9)
    np.testing.assert_allclose(header["space origin"], ORIGIN, atol=1e-9)
    np.testing.assert_array_equal(data, voxels.transpose(2, 1, 0))
    assert header["Segment0_Name"] == "gland" and header["Segment0_LabelValue"] == "1"
    assert header["Segment1_Name"] == "lesion 1" and header["Segment1_LabelValue"] == "2"
    assert header["Segment1_Extent"] == "2 4 3 6 1 3"
    assert {header[f"Segment{i}_Layer"] for i in (0, 1)} == {"0"}
    assert len({header[f"Segment{i}_ID"] for i in (0, 1)}) == 2
    colors = [tuple(map(float, header[f"Segment{i}_Color"].split())) for i in (0, 1)]
    assert colors == [s.color for s in default_segments(1)]


def test_seg_nrrd_round_trip(tmp_path):
    voxels = box_label_map()
    segments = [Segment("prostate", 1, (0.9, 0.7, 0.6)), Segment("lesion", 2, (1.0, 0.0, 0.0)),
                Segment("empty", 7, (0.0, 0.5, 1.0))]
    label_map, read_segments = read_seg_nrrd(write_seg_nrrd(oblique_image(voxels), tmp_path / "s.seg.nrrd",
                                                            segments))
    assert read_segments == segments
    assert_test_grid(label_map)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label_map), voxels)


def test_seg_nrrd_rejects_unnamed_labels_and_bad_suffix(tmp_path):
    with pytest.raises(InputError, match=r"label values \[2\] have no segment"):
        write_seg_nrrd(oblique_image(box_label_map()), tmp_path / "s.seg.nrrd", [Segment("gland", 1, (1, 1, 1))])
    with pytest.raises(InputError, match="seg.nrrd"):
        write_seg_nrrd(oblique_image(box_label_map()), tmp_path / "s.nrrd", default_segments(1))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="no such file"):
        read_seg_nrrd(tmp_path / "absent.seg.nrrd")


def test_default_segments_are_distinct():
    segments = default_segments(5)
    assert [s.name for s in segments] == ["gland"] + [f"lesion {i}" for i in range(1, 6)]
    assert [s.label_value for s in segments] == list(range(1, 7))
    colors = np.array([s.color for s in segments])
    assert ((colors >= 0) & (colors <= 1)).all()
    distances = np.linalg.norm(colors[:, None] - colors[None], axis=-1)
    assert distances[~np.eye(len(segments), dtype=bool)].min() > 0.1


# ------------------------------------------------------------------------- an image is not a transform


def test_nifti_passed_as_transform(tmp_path):
    path = write_volume(oblique_image(random_voxels()), tmp_path / "image.nii.gz")
    with pytest.raises(InputError, match="not an ITK transform file") as error:
        read_transform(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("suffix", [".mrk.json", ".csv"])
def test_text_outputs_are_utf8_whatever_the_locale(tmp_path, ascii_locale, suffix):
    """JSON and CSV carry non-ASCII text (μ-RegPro, target names) as UTF-8 even under an ASCII locale."""
    write_json({"source": "μ-RegPro"}, tmp_path / "summary.json")
    assert json.loads((tmp_path / "summary.json").read_bytes().decode("utf-8")) == {"source": "μ-RegPro"}
    path = write_points(np.array([[1.0, -2.0, 3.5]]), ["läsion µ1"], tmp_path / f"targets{suffix}")
    points, labels = read_points(path)
    assert labels == ["läsion µ1"]
    text = path.read_bytes().decode("utf-8")
    assert "läsion µ1" in (text if suffix == ".csv" else json.dumps(json.loads(text), ensure_ascii=False))
    np.testing.assert_allclose(points, [[1.0, -2.0, 3.5]])
