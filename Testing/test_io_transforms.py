"""ITK transform files: round trips checked by mapping random points with the original transform."""

import numpy as np
import pytest
import SimpleITK as sitk

from MRITRUSFusionLib.errors import InputError, OutputExistsError
from MRITRUSFusionLib.io import as_affine, is_linear, read_transform, require_kind, write_transform

TOL_MM = 1e-6
RNG = np.random.default_rng(0)


def euler() -> sitk.Euler3DTransform:
    return sitk.Euler3DTransform((10.0, -20.0, 35.0), 0.1, -0.2, 0.3, (4.0, -7.5, 12.25))


def affine() -> sitk.AffineTransform:
    matrix = np.eye(3) + RNG.uniform(-0.2, 0.2, (3, 3))
    return sitk.AffineTransform(matrix.ravel().tolist(), (1.5, -2.0, 3.0), (5.0, 6.0, -7.0))


def field_grid() -> sitk.Image:
    """A 10×9×8 grid of 4 mm voxels, oblique, covering the points of :func:`points_inside`."""
    grid = sitk.Image([10, 9, 8], sitk.sitkVectorFloat64, 3)
    grid.SetSpacing((4.0, 4.0, 4.0))
    grid.SetOrigin((-2.0, -3.0, -1.0))
    grid.SetDirection(sitk.VersorTransform((1.0, 1.0, 0.0), 0.3).GetMatrix())
    return grid


def displacement() -> sitk.DisplacementFieldTransform:
    grid = field_grid()
    field = sitk.GetImageFromArray(RNG.normal(0.0, 3.0, grid.GetSize()[::-1] + (3,)), isVector=True)
    field.CopyInformation(grid)
    return sitk.DisplacementFieldTransform(field)


def bspline() -> sitk.BSplineTransform:
    transform = sitk.BSplineTransformInitializer(field_grid(), [3, 3, 3])
    transform.SetParameters(RNG.normal(0.0, 2.0, transform.GetNumberOfParameters()).tolist())
    return transform


def points_inside(n=50) -> np.ndarray:
    """Points (LPS mm) well inside :func:`field_grid`, so field transforms interpolate, not extrapolate."""
    grid = field_grid()
    index = RNG.uniform(1.0, 7.0, (n, 3))
    return np.array([grid.TransformContinuousIndexToPhysicalPoint(i.tolist()) for i in index])


def mapped(transform: sitk.Transform, points: np.ndarray) -> np.ndarray:
    return np.array([transform.TransformPoint(p.tolist()) for p in points])


def assert_same_mapping(a: sitk.Transform, b: sitk.Transform) -> None:
    points = points_inside()
    moved = mapped(a, points)
    assert np.abs(moved - points).max() > 0.1  # the transform really moves points
    np.testing.assert_allclose(mapped(b, points), moved, atol=TOL_MM)


@pytest.mark.parametrize("make, suffix", [
    (euler, ".tfm"), (affine, ".txt"), (euler, ".h5"), (affine, ".h5"), (displacement, ".h5"), (bspline, ".h5"),
    (lambda: sitk.CompositeTransform([affine(), displacement()]), ".h5"),
])
def test_transform_round_trip_maps_points_the_same(tmp_path, make, suffix):
    transform = make()
    read = read_transform(write_transform(transform, tmp_path / f"t{suffix}"))
    assert read.GetDimension() == 3
    assert_same_mapping(transform, read)


def test_linear_composite_to_tfm_is_one_affine(tmp_path):
    composite = sitk.CompositeTransform([euler(), affine(), sitk.TranslationTransform(3, (3.0, 0.0, -2.0))])
    read = read_transform(write_transform(composite, tmp_path / "t.tfm"))
    assert read.GetName() == "AffineTransform"
    assert_same_mapping(composite, read)


def test_as_affine_applies_the_last_added_transform_first():
    first, second = affine(), euler()  # composite [first, second] maps x to first(second(x))
    composite = sitk.CompositeTransform([first, second])

    def matrix_of(t):
        homogeneous = np.eye(4)
        homogeneous[:3, :3] = np.reshape(t.GetMatrix(), (3, 3))
        center = np.asarray(t.GetCenter())
        homogeneous[:3, 3] = np.asarray(t.GetTranslation()) + center - homogeneous[:3, :3] @ center
        return homogeneous

    expected = matrix_of(first) @ matrix_of(second)
    np.testing.assert_allclose(matrix_of(as_affine(composite)), expected, atol=1e-9)


@pytest.mark.parametrize("make", [displacement, bspline,
                                  lambda: sitk.CompositeTransform([euler(), displacement()])])
def test_non_linear_transform_to_text_file_asks_for_h5(tmp_path, make):
    with pytest.raises(InputError, match=r"\.h5") as error:
        write_transform(make(), tmp_path / "t.tfm")
    assert str(tmp_path / "t.tfm") in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_is_linear_and_require_kind():
    assert is_linear(euler()) and is_linear(sitk.CompositeTransform([euler(), affine()]))
    assert not is_linear(displacement()) and not is_linear(sitk.CompositeTransform([euler(), bspline()]))
    assert require_kind(displacement(), "any", "t") is not None
    with pytest.raises(InputError, match="initial transform: expected a linear"):
        require_kind(displacement(), "linear", "initial transform")
    with pytest.raises(InputError, match="expected a linear"):
        as_affine(bspline())
    with pytest.raises(ValueError):
        require_kind(euler(), "rigid", "t")


def test_read_transform_bad_inputs(tmp_path):
    missing = tmp_path / "absent.h5"
    with pytest.raises(InputError, match="no such file") as error:
        read_transform(missing)
    assert str(missing) in str(error.value)
    flat = tmp_path / "flat.tfm"
    sitk.WriteTransform(sitk.Euler2DTransform(), str(flat))
    with pytest.raises(InputError, match="expected a 3D transform, got 2D") as error:
        read_transform(flat)
    assert str(flat) in str(error.value)
    garbage = tmp_path / "garbage.tfm"
    garbage.write_text("#Insight Transform File V1.0\nTransform: NoSuchTransform_double_3_3\n")
    with pytest.raises(InputError) as error:
        read_transform(garbage)
    assert str(garbage) in str(error.value) and "\n" not in str(error.value)


def test_write_transform_bad_targets(tmp_path):
    with pytest.raises(InputError, match="use one of"):
        write_transform(euler(), tmp_path / "t.nii.gz")
    with pytest.raises(InputError, match="3D"):
        write_transform(sitk.Euler2DTransform(), tmp_path / "t.tfm")
    target = write_transform(euler(), tmp_path / "t.tfm")
    with pytest.raises(OutputExistsError):
        write_transform(affine(), target, overwrite=False)
    assert read_transform(target).GetName() == "Euler3DTransform"
