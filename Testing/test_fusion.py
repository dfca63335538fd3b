"""Fusion displays: checkerboard squares in mm, blends, slice selection/orientation and the overlay PNG."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest
import SimpleITK as sitk

from MRITRUSFusionLib import fusion
from MRITRUSFusionLib.errors import InputError, OutputExistsError
from MRITRUSFusionLib.phantom import generate_phantom
from MRITRUSFusionLib.preprocess import resample_to

SPACING = (0.5, 1.25, 2.0)  # anisotropic (x, y, z) mm
OBLIQUE = sitk.VersorTransform((0.3, 0.5, 0.8), 0.6).GetMatrix()


def image(array_zyx, spacing=SPACING, origin=(10.0, -20.0, 5.0), direction=None, pixel=sitk.sitkFloat32):
    out = sitk.Cast(sitk.GetImageFromArray(np.asarray(array_zyx)), pixel)
    out.SetSpacing(spacing)
    out.SetOrigin(origin)
    if direction is not None:
        out.SetDirection(direction)
    return out


@pytest.fixture(scope="module")
def pair():
    """Fixed and moving images (size x=24, y=10, z=8) on one oblique, anisotropic grid, with disjoint ranges."""
    rng = np.random.default_rng(7)
    fixed = image(rng.uniform(0, 100, (8, 10, 24)), direction=OBLIQUE)
    moving = image(rng.uniform(200, 300, (8, 10, 24)), direction=OBLIQUE)
    return fixed, moving


# ------------------------------------------------------------------------------------------- checkerboard
# (squares_mm, ITK index (x, y, z), image shown). Voxel i lies at i * spacing mm from voxel 0 along its
# axis: x at 0.5 mm steps, y at 1.25 mm, z at 2 mm; the square holding voxel 0 shows the fixed image.
HAND_CASES = [
    (5.0, (0, 0, 0), "fixed"),
    (5.0, (9, 0, 0), "fixed"),     # x = 4.5 mm
    (5.0, (10, 0, 0), "moving"),   # x = 5.0 mm: second square
    (5.0, (19, 0, 0), "moving"),   # x = 9.5 mm
    (5.0, (20, 0, 0), "fixed"),    # x = 10 mm: third square
    (5.0, (0, 3, 0), "fixed"),     # y = 3.75 mm
    (5.0, (0, 4, 0), "moving"),    # y = 5.0 mm
    (5.0, (0, 8, 0), "fixed"),     # y = 10 mm
    (5.0, (0, 0, 2), "fixed"),     # z = 4 mm
    (5.0, (0, 0, 3), "moving"),    # z = 6 mm
    (5.0, (0, 0, 5), "fixed"),     # z = 10 mm
    (5.0, (10, 4, 0), "fixed"),    # second square in x and in y
    (5.0, (10, 4, 3), "moving"),   # ... and in z
    (2.5, (4, 0, 0), "fixed"),     # x = 2.0 mm
    (2.5, (5, 0, 0), "moving"),    # x = 2.5 mm
    (2.5, (0, 1, 0), "fixed"),     # y = 1.25 mm
    (2.5, (0, 2, 0), "moving"),    # y = 2.5 mm
    (2.5, (0, 0, 1), "fixed"),     # z = 2 mm
    (2.5, (0, 0, 2), "moving"),    # z = 4 mm
    (2.5, (5, 2, 2), "moving"),    # odd + odd + odd
]


@pytest.mark.parametrize("squares_mm, index, source", HAND_CASES)
def test_checkerboard_squares_are_measured_in_mm(pair, squares_mm, index, source):
    fixed, moving = pair
    board = fusion.checkerboard(fixed, moving, squares_mm=squares_mm)
    expected = fusion.normalize_intensity(fixed if source == "fixed" else moving).GetPixel(index)
    other = fusion.normalize_intensity(moving if source == "fixed" else fixed).GetPixel(index)
    assert expected != other  # the two inputs are distinguishable at this voxel
    assert board.GetPixel(index) == expected


def test_checkerboard_takes_every_voxel_from_one_input_on_the_fixed_grid(pair):
    fixed, moving = pair
    board = fusion.checkerboard(fixed, moving, squares_mm=5.0)
    assert board.GetSize() == fixed.GetSize() and board.GetPixelID() == sitk.sitkFloat32
    assert board.GetSpacing() == fixed.GetSpacing() and board.GetOrigin() == fixed.GetOrigin()
    assert board.GetDirection() == fixed.GetDirection()
    out = sitk.GetArrayFromImage(board)
    f = sitk.GetArrayFromImage(fusion.normalize_intensity(fixed))
    m = sitk.GetArrayFromImage(fusion.normalize_intensity(moving))
    from_moving = out == m
    assert np.all(from_moving | (out == f))
    # Squares of 5 mm: x splits 24 voxels (0.5 mm) into 10/10/4, y 10 voxels (1.25 mm) into 4/4/2, z 8 voxels
    # (2 mm) into 3/2/3. The count of voxels in odd squares follows.
    odd = lambda counts: sum(c for i, c in enumerate(counts) if i % 2)
    even = lambda counts: sum(c for i, c in enumerate(counts) if not i % 2)
    x, y, z = (10, 10, 4), (4, 4, 2), (3, 2, 3)
    n_moving = (odd(x) * even(y) * even(z) + even(x) * odd(y) * even(z) + even(x) * even(y) * odd(z)
                + odd(x) * odd(y) * odd(z))
    assert int(from_moving.sum()) == n_moving


def test_checkerboard_rejects_other_grid_and_bad_square(pair):
    fixed, moving = pair
    shifted = sitk.Image(moving)
    shifted.SetOrigin(tuple(o + 0.5 for o in moving.GetOrigin()))
    with pytest.raises(InputError, match="voxel grid"):
        fusion.checkerboard(fixed, shifted)
    with pytest.raises(InputError, match="positive"):
        fusion.checkerboard(fixed, moving, squares_mm=0.0)


def test_normalize_intensity_uses_robust_percentiles():
    values = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    values[0, 0, 0] = 1e6  # an outlier must not compress the range
    out = sitk.GetArrayFromImage(fusion.normalize_intensity(image(values)))
    low, high = np.percentile(values, [1, 99])
    assert out.min() == 0.0 and out.max() == 1.0
    assert out[5, 0, 0] == pytest.approx((500 - low) / (high - low), abs=1e-6)
    assert np.all(sitk.GetArrayFromImage(fusion.normalize_intensity(image(np.full((4, 4, 4), 3.0)))) == 0)


def test_blend_colours(pair):
    fixed, moving = pair
    f = sitk.GetArrayFromImage(fusion.normalize_intensity(fixed))
    m = sitk.GetArrayFromImage(fusion.normalize_intensity(moving))
    grey = fusion.blend(fixed, moving, alpha=0.0)
    assert grey.GetNumberOfComponentsPerPixel() == 3 and grey.GetOrigin() == fixed.GetOrigin()
    assert np.allclose(sitk.GetArrayFromImage(grey), f[..., None])
    full = sitk.GetArrayFromImage(fusion.blend(fixed, moving, alpha=1.0))
    assert np.allclose(full, np.stack([m, f, m], axis=-1), atol=1e-6)
    half = sitk.GetArrayFromImage(fusion.blend(fixed, moving, alpha=0.5))
    assert np.allclose(half[..., 0], 0.5 * f + 0.5 * m, atol=1e-6) and np.allclose(half[..., 1], f)
    import matplotlib

    hot = sitk.GetArrayFromImage(fusion.blend(fixed, moving, alpha=1.0, colormap="hot"))
    assert np.allclose(hot, matplotlib.colormaps["hot"](m)[..., :3], atol=1e-6)
    with pytest.raises(InputError, match="alpha"):
        fusion.blend(fixed, moving, alpha=1.5)
    with pytest.raises(InputError, match="colormap"):
        fusion.blend(fixed, moving, colormap="no-such-map")


# ------------------------------------------------------------------------------------------------- slices
def l_shaped_mask(direction=None):
    """Foreground: x 10..20, y 4..8, z 2..4 (165 voxels) plus x 30..32 at the same y, z (45 voxels).
    Centroid index: x = (165 * 15 + 45 * 31) / 210 = 18.43 -> 18, y = 6, z = 3 (bounding-box centre x = 21)."""
    array = np.zeros((7, 12, 40), np.uint8)
    array[2:5, 4:9, 10:21] = 1
    array[2:5, 4:9, 30:33] = 1
    return image(array, direction=direction, pixel=sitk.sitkUInt8)


def test_centroid_index_is_the_physical_centroid():
    assert fusion.centroid_index(l_shaped_mask()) == (18, 6, 3)
    assert fusion.centroid_index(l_shaped_mask(direction=OBLIQUE)) == (18, 6, 3)
    with pytest.raises(InputError, match="empty"):
        fusion.centroid_index(image(np.zeros((3, 3, 3)), pixel=sitk.sitkUInt8))


def test_planes_pass_through_the_centroid_with_mm_extents():
    mask = l_shaped_mask()
    values = image(np.random.default_rng(1).uniform(size=(7, 12, 40)))
    array = sitk.GetArrayFromImage(values)
    axial, coronal, sagittal = fusion.orthogonal_planes(values, fusion.centroid_index(mask))
    assert (axial.view, coronal.view, sagittal.view) == ("axial", "coronal", "sagittal")
    assert (axial.normal_axis, axial.slice_index) == (2, 3)
    assert (coronal.normal_axis, coronal.slice_index) == (1, 6)
    assert (sagittal.normal_axis, sagittal.slice_index) == (0, 18)
    assert np.array_equal(axial.extract(values), array[3])            # rows P (y), columns L (x)
    assert np.array_equal(coronal.extract(values), array[:, 6, :])    # rows S (z), columns L (x)
    assert np.array_equal(sagittal.extract(values), array[:, :, 18])  # rows S (z), columns P (y)
    # Extents are the outer voxel edges in LPS mm, so anisotropic voxels keep their true proportions.
    ox, oy, oz = values.GetOrigin()
    assert axial.extent == pytest.approx((ox - 0.25, ox + 39 * 0.5 + 0.25, oy - 0.625, oy + 11 * 1.25 + 0.625))
    assert sagittal.extent == pytest.approx((oy - 0.625, oy + 11 * 1.25 + 0.625, oz - 1.0, oz + 6 * 2.0 + 1.0))
    assert axial.invert_y and not coronal.invert_y and not sagittal.invert_y  # anterior up on axial views
    assert (axial.xlabel, axial.ylabel, sagittal.xlabel, sagittal.ylabel) == ("L (mm)", "P (mm)", "P (mm)", "S (mm)")
    # Default: the volume centre.
    assert [p.slice_index for p in fusion.orthogonal_planes(values)] == [3, 6, 20]


def test_planes_follow_a_permuted_and_flipped_grid():
    # Grid axes: x points S, y points R (-L), z points A (-P).
    direction = (0.0, -1.0, 0.0,
                 0.0, 0.0, -1.0,
                 1.0, 0.0, 0.0)
    values = image(np.random.default_rng(2).uniform(size=(6, 9, 11)), direction=direction)
    array = sitk.GetArrayFromImage(values)  # [z, y, x]
    axial, coronal, sagittal = fusion.orthogonal_planes(values, (4, 2, 3))
    assert (axial.normal_axis, axial.slice_index) == (0, 4)
    assert (coronal.normal_axis, coronal.slice_index) == (2, 3)
    assert (sagittal.normal_axis, sagittal.slice_index) == (1, 2)
    # Axial: columns L ascending = y descending, rows P ascending = z descending.
    assert np.array_equal(axial.extract(values), array[::-1, ::-1, 4])
    lps = {"L": 0, "P": 1, "S": 2}
    for plane in (axial, coronal, sagittal):
        shown = plane.extract(values)
        assert np.all(np.diff(plane.h_mm) > 0) and np.all(np.diff(plane.v_mm) > 0)
        for row, column in [(0, 0), (shown.shape[0] - 1, 0), (1, shown.shape[1] - 2)]:
            index = plane.index_of(row, column)
            assert shown[row, column] == values.GetPixel(index)
            point = values.TransformIndexToPhysicalPoint(index)
            assert point[lps[plane.xlabel[0]]] == pytest.approx(plane.h_mm[column])
            assert point[lps[plane.ylabel[0]]] == pytest.approx(plane.v_mm[row])


# ------------------------------------------------------------------------------------------------- figure
@pytest.fixture(scope="module")
def case():
    phantom = generate_phantom(seed=0)
    trus = phantom.trus

    def on_trus(img, transform, label=False):
        return resample_to(img, trus, transform, label=label)

    return {
        "fixed": trus,
        "moving_before": on_trus(phantom.mri, None),
        "moving_after": on_trus(phantom.mri, phantom.transform),
        "fixed_contours": {"TRUS gland": phantom.trus_labels[0], "TRUS tumour": phantom.trus_tumours},
        "moving_contours_before": {"MRI gland": on_trus(phantom.mri_labels[0], None, True)},
        "moving_contours_after": {"MRI gland": on_trus(phantom.mri_labels[0], phantom.transform, True)},
    }


def colour_pixels(png: np.ndarray, colour: str) -> int:
    """Saturated pixels of ``colour`` in the panels (the legend row at the bottom excluded)."""
    rgb = png[: int(0.88 * png.shape[0]), :, :3]
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if colour == "yellow":
        return int(np.sum((r > 0.9) & (g > 0.9) & (b < 0.25)))
    return int(np.sum((r > 0.85) & (g < 0.25) & (b < 0.25)))  # red


@pytest.mark.parametrize("mode", ["blend", "checkerboard"])
def test_overlay_png_is_written(tmp_path, case, mode):
    path = fusion.write_overlay_png(tmp_path / "overlay.png", **case, mode=mode, title="phantom")
    assert path == tmp_path / "overlay.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size < 1_000_000
    png = mpimg.imread(path)
    assert png.shape[:2] == (800, 1100) and png.shape[2] in (3, 4)
    assert png[..., :3].std() > 0.1  # not blank
    # TRUS labels (yellow first) and the MRI gland (red first) are outlined in the panels.
    assert colour_pixels(png, "yellow") > 200 and colour_pixels(png, "red") > 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.png"]  # no temporary file left


def test_overlay_without_contours_uses_the_volume_centre(tmp_path, case):
    path = fusion.write_overlay_png(tmp_path / "plain.png", case["fixed"], case["moving_before"],
                                    case["moving_after"], None, None, None, mode="checkerboard", dpi=50)
    png = mpimg.imread(path)
    assert png.shape[:2] == (400, 550)
    assert colour_pixels(png, "yellow") == 0 and colour_pixels(png, "red") == 0


def test_mis_gridded_label_is_named_and_leaves_no_file(tmp_path, case):
    gland = case["moving_contours_after"]["MRI gland"]
    shifted = sitk.Image(gland)
    shifted.SetOrigin(tuple(o + 0.01 for o in gland.GetOrigin()))
    with pytest.raises(InputError, match="MRI gland"):
        fusion.write_overlay_png(tmp_path / "overlay.png", **{**case, "moving_contours_after": {"MRI gland": shifted}})
    coarse = sitk.Shrink(case["fixed_contours"]["TRUS tumour"], (2, 2, 2))
    with pytest.raises(InputError, match="TRUS tumour"):
        fusion.write_overlay_png(tmp_path / "overlay.png", **{**case, "fixed_contours": {"TRUS tumour": coarse}})
    with pytest.raises(InputError, match="after registration"):
        fusion.write_overlay_png(tmp_path / "overlay.png", **{**case, "moving_after": sitk.Shrink(case["moving_after"], (2, 1, 1))})
    with pytest.raises(InputError, match="mode"):
        fusion.write_overlay_png(tmp_path / "overlay.png", **case, mode="side-by-side")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_file_and_no_partial_one(tmp_path, case, monkeypatch):
    from matplotlib.figure import Figure

    target = tmp_path / "overlay.png"
    target.write_bytes(b"previous")

    def broken_savefig(self, fname, **kwargs):
        with open(fname, "wb") as handle:
            handle.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        fusion.write_overlay_png(target, **case)
    assert target.read_bytes() == b"previous"
    assert list(tmp_path.iterdir()) == [target]
    monkeypatch.undo()
    with pytest.raises(OutputExistsError):
        fusion.write_overlay_png(target, **case, overwrite=False)
    assert target.read_bytes() == b"previous"
