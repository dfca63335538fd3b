"""Spatial utilities of learned registration against SimpleITK and analytic fields, on oblique anisotropic grids."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.phantom import _rotation_matrix, make_grid
from MRITRUSFusionLib.registration.learned import (
    compose_ddf,
    ddf_to_displacement_mm,
    ddf_to_transform,
    displacement_mm_to_ddf,
    euler_to_rigid_params,
    index_to_physical_affine,
    integrate_velocity,
    physical_to_index_affine,
    rigid_params_to_ddf,
    rigid_params_to_euler,
    rigid_params_to_matrix,
    transform_to_ddf,
    voxel_to_normalized_ddf,
    warp,
)

SIZE = (22, 18, 14)  # (i, j, k)
SPACING = (0.8, 1.1, 1.6)
CENTRE = (12.0, -30.0, 45.0)


@pytest.fixture(scope="module")
def grid() -> sitk.Image:
    """An oblique, anisotropic grid holding a smooth image."""
    image = make_grid(SIZE, SPACING, _rotation_matrix((20.0, -10.0, 30.0)), CENTRE)
    k, j, i = np.meshgrid(*[np.arange(n) for n in SIZE[::-1]], indexing="ij")
    values = (np.sin(i / 3.0) * np.cos(j / 4.0) + 0.5 * np.sin(k / 2.5 + 0.3)
              + np.exp(-((i - 10) ** 2 + (j - 8) ** 2 + (k - 6) ** 2) / 20.0))
    array = sitk.GetImageFromArray(values.astype(np.float32))
    array.CopyInformation(image)
    return array


def as_tensor(image: sitk.Image) -> torch.Tensor:
    return torch.from_numpy(sitk.GetArrayFromImage(image).astype(np.float64))[None, None]


def centre_of(image: sitk.Image) -> np.ndarray:
    return np.array(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))


def inside(ddf: torch.Tensor, margin: float = 1e-3) -> np.ndarray:
    """Voxels whose sampled position p + u lies within the grid (where SimpleITK and grid_sample agree)."""
    shape = ddf.shape[2:]
    index = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=ddf.dtype) for n in shape], indexing="ij"))
    target = index[None] + ddf
    ok = torch.ones(shape, dtype=torch.bool)
    for axis, n in enumerate(shape):
        ok &= (target[0, axis] >= margin) & (target[0, axis] <= n - 1 - margin)
    return ok.numpy()


def resampled(image: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.Resample(image, image, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat64))


def test_index_to_physical_affine_matches_sitk(grid):
    rng = np.random.default_rng(0)
    indexes = rng.uniform(-1, np.array(SIZE), size=(10, 3))
    expected = np.array([grid.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in indexes])
    ijk = index_to_physical_affine(grid, "ijk").numpy()
    dhw = index_to_physical_affine(grid, "dhw").numpy()
    homogeneous = np.c_[indexes, np.ones(10)]
    np.testing.assert_allclose((homogeneous @ ijk.T)[:, :3], expected, atol=1e-9)
    np.testing.assert_allclose((np.c_[indexes[:, ::-1], np.ones(10)] @ dhw.T)[:, :3], expected, atol=1e-9)
    back = (np.c_[expected, np.ones(10)] @ physical_to_index_affine(grid).numpy().T)[:, :3]
    np.testing.assert_allclose(back, indexes, atol=1e-9)


def test_translation_field_warps_as_sitk_resample(grid):
    translation = np.array([2.3, -1.7, 3.1])  # mm, LPS
    transform = sitk.TranslationTransform(3, translation.tolist())
    # analytic voxel DDF: a constant field, the translation expressed along the grid axes (D, H, W)
    voxel = physical_to_index_affine(grid, "dhw").numpy()[:3, :3] @ translation
    ddf = torch.from_numpy(voxel).view(1, 3, 1, 1, 1).expand(1, 3, *SIZE[::-1]).contiguous()
    np.testing.assert_allclose(transform_to_ddf(transform, grid, dtype=torch.float64), ddf, atol=1e-9)
    warped = warp(as_tensor(grid), ddf)[0, 0].numpy()
    mask = inside(ddf)
    assert mask.mean() > 0.3
    np.testing.assert_allclose(warped[mask], resampled(grid, transform)[mask], atol=1e-5)


def test_rotation_field_warps_as_sitk_resample(grid):
    params = torch.tensor([[1.5, -0.5, 2.0, 6.0, -4.0, 9.0]], dtype=torch.float64)  # mm, degrees
    centre = centre_of(grid)
    transform = rigid_params_to_euler(params, centre)
    ddf = rigid_params_to_ddf(params, grid, centre)
    np.testing.assert_allclose(transform_to_ddf(transform, grid, dtype=torch.float64), ddf, atol=1e-9)
    mask = inside(ddf)
    assert mask.mean() > 0.3
    expected = resampled(grid, transform)
    np.testing.assert_allclose(warp(as_tensor(grid), ddf)[0, 0].numpy()[mask], expected[mask], atol=1e-5)
    # the same warp through normalised coordinates
    normalized = voxel_to_normalized_ddf(ddf)
    np.testing.assert_allclose(warp(as_tensor(grid), normalized, units="normalized")[0, 0].numpy()[mask],
                               expected[mask], atol=1e-5)


def test_warp_agrees_with_monai_warp(grid):
    from monai.networks.blocks import Warp

    torch.manual_seed(0)
    ddf = torch.randn(2, 3, *SIZE[::-1], dtype=torch.float64) * 2.0
    image = as_tensor(grid).expand(2, 2, -1, -1, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = Warp(mode="bilinear", padding_mode="border")(image, ddf)
    np.testing.assert_allclose(warp(image, ddf, padding_mode="border"), reference, atol=1e-10)


def test_integrator_zero_and_constant_fields():
    shape = (1, 3, 10, 9, 8)
    zero = torch.zeros(shape)
    assert torch.equal(integrate_velocity(zero), zero)
    velocity = torch.tensor([1.7, -2.4, 0.6]).view(1, 3, 1, 1, 1).expand(shape).contiguous()
    np.testing.assert_allclose(integrate_velocity(velocity), velocity, atol=1e-5)
    normalized = voxel_to_normalized_ddf(velocity)
    np.testing.assert_allclose(integrate_velocity(normalized, units="normalized"), normalized, atol=1e-6)


def test_integrator_matches_dvf2ddf_and_is_invertible():
    from monai.networks.blocks import DVF2DDF

    d, h, w = torch.meshgrid(*[torch.arange(16, dtype=torch.float64)] * 3, indexing="ij")
    velocity = torch.stack([1.5 * torch.sin(h / 4 + 0.5 * c) * torch.cos(w / 5 + d / 7) for c in range(3)])[None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = DVF2DDF(num_steps=7, padding_mode="border")(velocity)
    forward = integrate_velocity(velocity)
    np.testing.assert_allclose(forward, reference, atol=1e-10)
    # exp(v) composed with exp(-v) is the identity away from the border
    residual = compose_ddf(forward, integrate_velocity(-velocity))[..., 3:-3, 3:-3, 3:-3]
    assert forward.abs().max() > 1.0
    assert residual.abs().max() < 0.03


def test_displacement_field_transform_maps_points_as_the_field(grid, tmp_path):
    rng = np.random.default_rng(2)
    d, h, w = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in SIZE[::-1]], indexing="ij")
    coefficients = torch.from_numpy(rng.normal(scale=0.08, size=(3, 3)))
    ddf = (torch.einsum("cq,qdhw->cdhw", coefficients, torch.stack([d, h, w])) + 0.5)[None]  # linear in index
    transform = ddf_to_transform(ddf, grid)
    mm = ddf_to_displacement_mm(ddf, grid)
    np.testing.assert_allclose(displacement_mm_to_ddf(mm, grid), ddf, atol=1e-12)
    # voxel centres: x -> x + u_mm(x), and that point is where warp() samples the moving grid
    to_index = physical_to_index_affine(grid).numpy()
    for index in [(0, 0, 0), (5, 7, 3), (21, 17, 13), (10, 2, 12)]:
        i, j, k = index
        point = np.array(grid.TransformIndexToPhysicalPoint(index))
        mapped = np.array(transform.TransformPoint(point.tolist()))
        np.testing.assert_allclose(mapped, point + mm[0, :, k, j, i].numpy(), atol=1e-9)
        expected_index = np.array([i, j, k], float) + ddf[0, :, k, j, i].numpy()[::-1]
        np.testing.assert_allclose(to_index[:3, :3] @ mapped + to_index[:3, 3], expected_index, atol=1e-9)
    # between voxel centres the field is interpolated linearly: exact for a field linear in the index
    for continuous in rng.uniform(0, np.array(SIZE) - 1, size=(5, 3)):
        point = np.array(grid.TransformContinuousIndexToPhysicalPoint(continuous.tolist()))
        index_dhw = continuous[::-1]
        expected = coefficients.numpy() @ index_dhw + 0.5
        expected_mm = index_to_physical_affine(grid, "dhw").numpy()[:3, :3] @ expected
        np.testing.assert_allclose(transform.TransformPoint(point.tolist()), point + expected_mm, atol=1e-9)
    # written as .h5 and read back by SimpleITK, the map is the same
    sitk.WriteTransform(transform, str(tmp_path / "ddf.h5"))
    reread = sitk.ReadTransform(str(tmp_path / "ddf.h5"))
    probe = grid.TransformContinuousIndexToPhysicalPoint((3.3, 4.1, 5.7))
    np.testing.assert_allclose(reread.TransformPoint(probe), transform.TransformPoint(probe), atol=1e-9)


def test_displacement_field_resampled_onto_the_full_grid(grid):
    """A field predicted on a crop, resampled onto a larger, differently oriented grid in physical space."""
    params = torch.tensor([[1.0, 2.0, -1.5, 3.0, 2.0, -5.0]], dtype=torch.float64)
    centre = centre_of(grid)
    crop_transform = ddf_to_transform(rigid_params_to_ddf(params, grid, centre), grid)
    full = make_grid((30, 26, 20), (1.0, 1.0, 1.2), _rotation_matrix((0.0, 15.0, -5.0)), centre)
    on_full = ddf_to_transform(rigid_params_to_ddf(params, grid, centre), grid, output_grid=full)
    assert on_full.GetDisplacementField().GetSize() == full.GetSize()
    euler = rigid_params_to_euler(params, centre)
    for continuous in [(5.5, 6.2, 4.1), (10.0, 9.0, 7.0), (15.2, 3.3, 9.9)]:  # well inside the crop
        point = grid.TransformContinuousIndexToPhysicalPoint(continuous)
        np.testing.assert_allclose(crop_transform.TransformPoint(point), euler.TransformPoint(point), atol=1e-9)
        # a rigid field is linear in space: trilinear resampling keeps it exact inside the crop
        np.testing.assert_allclose(on_full.TransformPoint(point), euler.TransformPoint(point), atol=1e-6)
    outside = np.array(full.TransformIndexToPhysicalPoint((0, 0, 0)))
    assert np.any(physical_to_index_affine(grid).numpy()[:3, :3] @ outside + physical_to_index_affine(grid).numpy()[
        :3, 3] < -1)
    np.testing.assert_allclose(on_full.TransformPoint(outside.tolist()), outside, atol=1e-9)  # identity outside


def test_rigid_params_euler_round_trip(tmp_path):
    params = np.array([4.0, -2.5, 7.0, 10.0, -20.0, 35.0])  # mm, degrees
    centre = np.array([10.0, -5.0, 30.0])
    euler = rigid_params_to_euler(params, centre)
    assert euler.GetComputeZYX()
    np.testing.assert_allclose(euler.GetParameters()[:3], np.deg2rad(params[3:]), atol=1e-12)
    np.testing.assert_allclose(np.array(euler.GetMatrix()).reshape(3, 3), _rotation_matrix(tuple(params[3:])),
                               atol=1e-12)
    rotation, translation = rigid_params_to_matrix(torch.from_numpy(params)[None])
    np.testing.assert_allclose(rotation[0].numpy(), _rotation_matrix(tuple(params[3:])), atol=1e-12)
    np.testing.assert_allclose(translation[0].numpy(), params[:3])
    # T(x) = R (x - c) + c + t: the centre goes to c + t
    np.testing.assert_allclose(euler.TransformPoint(centre.tolist()), centre + params[:3], atol=1e-12)
    np.testing.assert_allclose(euler_to_rigid_params(euler), params, atol=1e-9)
    radians = euler_to_rigid_params(euler, degrees=False)
    np.testing.assert_allclose(radians[3:], np.deg2rad(params[3:]), atol=1e-12)
    np.testing.assert_allclose(euler_to_rigid_params(rigid_params_to_euler(radians, centre, degrees=False)), params,
                               atol=1e-9)
    # through an ITK file, and from an affine about another centre
    sitk.WriteTransform(euler, str(tmp_path / "rigid.tfm"))
    np.testing.assert_allclose(euler_to_rigid_params(sitk.ReadTransform(str(tmp_path / "rigid.tfm")), centre),
                               params, atol=1e-9)
    affine = sitk.AffineTransform(euler.GetMatrix(), euler.GetTranslation(), euler.GetCenter())
    other = euler_to_rigid_params(affine, center_mm=(0.0, 0.0, 0.0))
    for point in ([0.0, 0.0, 0.0], [30.0, -12.0, 4.0]):
        np.testing.assert_allclose(rigid_params_to_euler(other, (0.0, 0.0, 0.0)).TransformPoint(point),
                                   euler.TransformPoint(point), atol=1e-9)
    # a rounded (slightly non-orthogonal) matrix is projected onto the nearest rotation
    rounded = sitk.AffineTransform(np.round(np.array(euler.GetMatrix()), 4).tolist(), euler.GetTranslation(),
                                   euler.GetCenter())
    np.testing.assert_allclose(euler_to_rigid_params(rounded), params, atol=0.02)


def test_bad_shapes_are_clear_errors(grid):
    with pytest.raises(InputError, match=r"\(B, 3, D, H, W\)"):
        warp(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(InputError, match="does not match the grid"):
        ddf_to_transform(torch.zeros(3, 4, 4, 4), grid)
    with pytest.raises(InputError, match="6 rigid parameters"):
        rigid_params_to_euler([1.0, 2.0], (0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="units"):
        warp(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 3, 4, 4, 4), units="mm")
