"""Jacobian determinant against analytic transforms and SimpleITK's filter (interior, axis-aligned grid)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.metrics import jacobian_determinant, jacobian_statistics

OBLIQUE = sitk.VersorTransform((0.3, 0.5, 0.8), 0.6).GetMatrix()


def reference(size=(14, 12, 10), spacing=(0.9, 1.4, 2.2), origin=(5.0, -8.0, 3.0), direction=None):
    image = sitk.Image(list(size), sitk.sitkUInt8)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def affine(matrix, translation=(1.0, -2.0, 0.5), centre=(3.0, 1.0, -4.0)):
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(np.asarray(matrix, float).ravel().tolist())
    transform.SetTranslation(translation)
    transform.SetCenter(centre)
    return transform


MATRICES = {
    "general": [[1.1, 0.2, 0.0], [0.1, 0.9, 0.3], [0.0, -0.2, 1.2]],
    "shear": [[1.0, 0.7, 0.0], [0.0, 1.0, 0.0], [0.4, 0.0, 1.0]],
    "reflection": [[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
}


@pytest.mark.parametrize("direction", [None, OBLIQUE], ids=["axis_aligned", "oblique"])
@pytest.mark.parametrize("name", list(MATRICES))
def test_affine_has_det_a_everywhere(name, direction):
    matrix = MATRICES[name]
    grid = reference(direction=direction)
    determinant = sitk.GetArrayFromImage(jacobian_determinant(affine(matrix), grid))
    np.testing.assert_allclose(determinant, np.linalg.det(matrix), rtol=0, atol=1e-9)
    # the result lies on the reference grid
    result = jacobian_determinant(affine(matrix), grid)
    assert result.GetSize() == grid.GetSize() and result.GetDirection() == grid.GetDirection()
    assert result.GetSpacing() == grid.GetSpacing() and result.GetOrigin() == grid.GetOrigin()


def test_affine_statistics():
    matrix = MATRICES["general"]
    stats = jacobian_statistics(affine(matrix), reference(direction=OBLIQUE))
    det_a = np.linalg.det(matrix)
    assert stats["folding_fraction"] == 0.0
    assert stats["log_jacobian_std"] == pytest.approx(0.0, abs=1e-9)
    for key in ("jacobian_min", "jacobian_max", "jacobian_mean"):
        assert stats[key] == pytest.approx(det_a, abs=1e-9)
    assert jacobian_statistics(affine(MATRICES["reflection"]), reference())["folding_fraction"] == 1.0


def folding_field(grid, folded_slices):
    """u_x = -2 (x - x0) on the first ``folded_slices`` z-slices, 0 elsewhere.

    det J = 1 + du_x/dx: -1 on those slices, 1 elsewhere."""
    size = grid.GetSize()
    field = np.zeros((size[2], size[1], size[0], 3))
    x_mm = np.arange(size[0]) * grid.GetSpacing()[0]
    field[:folded_slices, :, :, 0] = -2.0 * (x_mm - x_mm.mean())
    image = sitk.GetImageFromArray(field, isVector=True)
    image.CopyInformation(grid)
    return sitk.DisplacementFieldTransform(image)


def test_folding_field_is_detected():
    grid = reference(size=(16, 12, 10))
    transform = folding_field(grid, folded_slices=4)
    determinant = sitk.GetArrayFromImage(jacobian_determinant(transform, grid))
    np.testing.assert_allclose(determinant[:4], -1.0, atol=1e-9)
    np.testing.assert_allclose(determinant[4:], 1.0, atol=1e-9)
    stats = jacobian_statistics(transform, grid)
    assert stats["folding_fraction"] == pytest.approx(4 / 10)
    assert stats["jacobian_min"] == pytest.approx(-1.0) and stats["jacobian_max"] == pytest.approx(1.0)
    # log(clip(det)) is log(1e-9) on 40 % of voxels and 0 elsewhere
    assert stats["log_jacobian_std"] == pytest.approx(np.std([np.log(1e-9)] * 4 + [0.0] * 6))

    folded = np.zeros((10, 12, 16), np.uint8)
    folded[:2] = 1
    folded[5:7] = 1
    mask = sitk.GetImageFromArray(folded)
    mask.CopyInformation(grid)
    assert jacobian_statistics(transform, grid, mask=mask)["folding_fraction"] == pytest.approx(0.5)


def test_interior_matches_simpleitk_filter_for_a_bspline_on_an_axis_aligned_grid():
    """Inside the grid both use central differences; SimpleITK's filter is only valid without direction and
    away from the border (see the module docstring), so it serves as an oracle there."""
    grid = reference(size=(16, 14, 12), spacing=(1.0, 1.5, 2.0))
    bspline = sitk.BSplineTransformInitializer(grid, [3, 3, 3])
    rng = np.random.default_rng(3)
    bspline.SetParameters(rng.normal(0.0, 1.5, bspline.GetNumberOfParameters()).tolist())
    ours = sitk.GetArrayFromImage(jacobian_determinant(bspline, grid))
    field = sitk.TransformToDisplacementField(
        bspline, sitk.sitkVectorFloat64, grid.GetSize(), grid.GetOrigin(), grid.GetSpacing(), grid.GetDirection()
    )
    theirs = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field))
    assert np.ptp(ours) > 0.1  # a genuinely non-uniform deformation
    np.testing.assert_allclose(ours[1:-1, 1:-1, 1:-1], theirs[1:-1, 1:-1, 1:-1], rtol=1e-9, atol=1e-9)


def test_invalid_inputs():
    grid = reference()
    with pytest.raises(InputError, match="at least 3 voxels"):
        jacobian_determinant(sitk.Transform(), reference(size=(2, 8, 8)))
    with pytest.raises(InputError, match="transform"):
        jacobian_determinant("identity", grid)
    empty = sitk.Image(grid.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(grid)
    with pytest.raises(InputError, match="mask: empty"):
        jacobian_statistics(sitk.Transform(), grid, mask=empty)
