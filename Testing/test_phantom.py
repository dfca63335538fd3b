"""The phantom generator: seeded, configurable, and its ground-truth transform really relates the two volumes
(checked on label centroids and by resampling with SimpleITK), written in the DeepReg paired layout."""

import numpy as np
import pytest
import SimpleITK as sitk

from MRITRUSFusionLib.io import deepreg_paired_cases, read_label_channels, read_transform
from MRITRUSFusionLib.metrics.landmarks import centroids_mm
from MRITRUSFusionLib.metrics.overlap import dice
from MRITRUSFusionLib.phantom import generate_phantom, write_phantom_case


@pytest.fixture(scope="module")
def case():
    return generate_phantom(seed=5, n_tumours=2)


def test_same_seed_same_case_other_seed_other_case():
    a, b, c = generate_phantom(seed=11), generate_phantom(seed=11), generate_phantom(seed=12)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a.trus), sitk.GetArrayFromImage(b.trus))
    assert not np.array_equal(sitk.GetArrayFromImage(a.trus), sitk.GetArrayFromImage(c.trus))


def test_size_and_spacing_are_configurable():
    small = generate_phantom(seed=1, trus_size=(40, 50, 60), trus_spacing=(1.5, 1.2, 1.0),
                             mri_size=(30, 30, 20), mri_spacing=(2.0, 2.0, 3.0))
    assert small.trus.GetSize() == (40, 50, 60) and small.trus.GetSpacing() == (1.5, 1.2, 1.0)
    assert small.mri.GetSize() == (30, 30, 20) and small.mri.GetSpacing() == (2.0, 2.0, 3.0)
    for label in small.trus_labels + [small.trus_tumours, small.trus_zones]:
        assert label.GetSize() == small.trus.GetSize() and label.GetOrigin() == small.trus.GetOrigin()


def test_ground_truth_maps_trus_landmarks_onto_mri_landmarks(case):
    fixed, moving = centroids_mm(case.trus_labels[1:]), centroids_mm(case.mri_labels[1:])
    mapped = np.array([case.transform.TransformPoint(p.tolist()) for p in fixed])
    assert np.linalg.norm(fixed - moving, axis=1).mean() > 5.0  # the pair is really misaligned
    assert np.linalg.norm(mapped - moving, axis=1).max() < 0.5


def test_mri_labels_resampled_by_ground_truth_match_trus_labels(case):
    for mri_label, trus_label in ((case.mri_labels[0], case.trus_labels[0]), (case.mri_tumours, case.trus_tumours)):
        warped = sitk.Resample(mri_label, case.trus, case.transform, sitk.sitkNearestNeighbor, 0)
        assert dice(warped > 0, trus_label > 0) > 0.9


def test_anatomy_is_consistent(case):
    gland = sitk.GetArrayFromImage(case.trus_labels[0]) > 0
    tumours = sitk.GetArrayFromImage(case.trus_tumours)
    zones = sitk.GetArrayFromImage(case.trus_zones)
    assert set(np.unique(tumours)) == {0, 1, 2}  # two tumours, numbered
    assert np.all(gland[tumours > 0]) and np.all(gland[zones > 0])
    assert set(np.unique(zones[gland])) == {1, 2}  # peripheral and transition zones
    trus = sitk.GetArrayFromImage(case.trus)
    assert (trus == 0).mean() > 0.2  # outside the probe's fan
    assert np.all(np.isfinite(trus)) and np.all(np.isfinite(sitk.GetArrayFromImage(case.mri)))


def test_written_case_reads_back_as_deepreg_dataset(case, tmp_path):
    write_phantom_case(case, tmp_path, "case007")
    (found,) = deepreg_paired_cases(tmp_path)
    assert found.name == "case007"
    channels = read_label_channels(found.fixed_label)
    assert len(channels) == len(case.trus_labels)
    transform = read_transform(tmp_path / "transforms" / "case007.h5")
    point = centroids_mm(case.trus_labels[1:2])[0]
    np.testing.assert_allclose(transform.TransformPoint(point.tolist()), case.transform.TransformPoint(point.tolist()),
                               atol=1e-6)
