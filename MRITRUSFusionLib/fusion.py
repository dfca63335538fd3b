"""Fusion displays: intensity normalisation, checkerboards, colour blends and before/after overlay figures.

Conventions (see ``ARCHITECTURE.md``): geometry is physical (ITK/LPS, mm); TRUS is the *fixed* image and
MRI the *moving* image. Every function here works on the **fixed grid**: the moving image and moving
labels must already be resampled onto it (``preprocess.resample_to(mri, trus, transform)``, ``label=True``
for label maps), so voxel ``(i, j, k)`` of every input is the same physical point.

NumPy arrays from SimpleITK are indexed ``[z, y, x]``; ITK indices, sizes and spacings are ``(x, y, z)``.
Figures are drawn with Matplotlib's Agg canvas directly (no ``pyplot``, no GUI, no global backend switch),
so this module is safe to call headless and inside 3D Slicer.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .io.atomic import atomic_output
from .metrics._image import check_image, check_same_grid

__all__ = [
    "SlicePlane",
    "blend",
    "centroid_index",
    "checkerboard",
    "normalize_intensity",
    "orthogonal_planes",
    "write_overlay_png",
]

#: LPS unit vectors of the anatomical axes.
_L, _P, _S = np.eye(3)
#: Each view: (name, normal, screen-right axis, screen-up axis) as LPS vectors, radiological convention
#: as in 3D Slicer: axial shows the patient's left on the right and anterior up; coronal left on the
#: right and superior up; sagittal posterior on the right (anterior left) and superior up.
_VIEWS = (("axial", _S, _L, -_P), ("coronal", _P, _L, _S), ("sagittal", _L, _P, _S))
_AXIS_NAMES = {0: "L", 1: "P", 2: "S"}

#: Contour colours: fixed-space labels (solid lines) and moving labels (dashed), cycled when exhausted.
FIXED_COLOURS = ("yellow", "cyan", "lime", "white", "gold")
MOVING_COLOURS = ("red", "darkorange", "deeppink", "royalblue", "sienna")


# --------------------------------------------------------------------------------------------- intensities
def normalize_intensity(image: sitk.Image, lower_percentile: float = 1.0,
                        upper_percentile: float = 99.0) -> sitk.Image:
    """``image`` mapped linearly so its ``lower``/``upper`` percentiles become 0 and 1, clipped to [0, 1].

    Returns a float32 image with ``image``'s geometry. A constant image (equal percentiles) maps to 0.
    """
    check_image(image, "image to normalise")
    if not 0.0 <= lower_percentile < upper_percentile <= 100.0:
        raise InputError(f"percentiles must satisfy 0 <= lower < upper <= 100, got "
                         f"{lower_percentile}, {upper_percentile}")
    out = sitk.GetImageFromArray(_normalized_array(sitk.GetArrayViewFromImage(image),
                                                   lower_percentile, upper_percentile))
    out.CopyInformation(image)
    return out


def _normalized_array(array: np.ndarray, lower: float = 1.0, upper: float = 99.0) -> np.ndarray:
    values = np.asarray(array, dtype=np.float32)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, np.float32)
    low, high = np.percentile(finite, [lower, upper])
    if not high > low:
        return np.zeros(values.shape, np.float32)
    scaled = (np.nan_to_num(values, nan=low) - np.float32(low)) / np.float32(high - low)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def _checker_parity(size_xyz: Sequence[int], spacing_xyz: Sequence[float], squares_mm: float) -> np.ndarray:
    """Boolean ``[z, y, x]`` array, True in the odd squares of a 3D checker of ``squares_mm`` cubes.

    Square ``n`` along a grid axis covers ``[n * squares_mm, (n + 1) * squares_mm)`` mm measured along that
    axis from the centre of voxel 0, so voxel ``i`` lies in square ``floor(i * spacing / squares_mm)``.
    """
    def parity(n: int, spacing: float) -> np.ndarray:
        # The tiny epsilon puts a voxel exactly on a square boundary (in exact arithmetic) in the next square.
        return (np.floor(np.arange(n) * spacing / squares_mm + 1e-9).astype(np.int64) % 2).astype(bool)

    px, py, pz = (parity(n, s) for n, s in zip(size_xyz, spacing_xyz))
    return pz[:, None, None] ^ py[None, :, None] ^ px[None, None, :]


def checkerboard(fixed: sitk.Image, moving_on_fixed: sitk.Image, squares_mm: float = 10.0) -> sitk.Image:
    """3D checkerboard of the intensity-normalised ``fixed`` and ``moving_on_fixed`` (float32, [0, 1]).

    Both images are first mapped to [0, 1] by :func:`normalize_intensity` (1st/99th percentiles). The
    result lies on the fixed grid; cubes of edge ``squares_mm`` (physical mm along each grid axis, measured
    from the centre of voxel 0, so anisotropic voxels give equal-sized squares in mm) alternate between the
    two, the cube holding voxel 0 showing ``fixed``.

    Raises:
        InputError: the images are not on one grid, or ``squares_mm`` is not positive.
    """
    check_same_grid(fixed, moving_on_fixed, "fixed image", "moving image (resampled onto the fixed grid)")
    if not squares_mm > 0:
        raise InputError(f"checkerboard square size must be positive, got {squares_mm} mm")
    f = _normalized_array(sitk.GetArrayViewFromImage(fixed))
    m = _normalized_array(sitk.GetArrayViewFromImage(moving_on_fixed))
    out = sitk.GetImageFromArray(np.where(_checker_parity(fixed.GetSize(), fixed.GetSpacing(), squares_mm), m, f))
    out.CopyInformation(fixed)
    return out


def _blend_arrays(fixed01: np.ndarray, moving01: np.ndarray, alpha: float, colormap: str) -> np.ndarray:
    """RGB (``[..., 3]``, float32 in [0, 1]) of normalised arrays: ``(1 - alpha) grey(f) + alpha C``."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"blend alpha must lie in [0, 1], got {alpha}")
    grey = np.repeat(fixed01[..., None], 3, axis=-1)
    if colormap == "magenta-green":
        colour = np.stack([moving01, fixed01, moving01], axis=-1)
    else:
        import matplotlib

        try:
            cmap = matplotlib.colormaps[colormap]
        except KeyError:
            raise InputError(f"unknown colormap {colormap!r}: use 'magenta-green' or a Matplotlib name "
                             f"such as 'hot'") from None
        colour = cmap(moving01)[..., :3]
    return ((1.0 - alpha) * grey + alpha * colour).astype(np.float32)


def blend(fixed: sitk.Image, moving_on_fixed: sitk.Image, alpha: float = 0.5,
          colormap: str = "magenta-green") -> sitk.Image:
    """Colour blend on the fixed grid: a 3-component float32 RGB vector image with values in [0, 1].

    Both images are normalised to [0, 1] (1st/99th percentiles); each voxel is
    ``(1 - alpha) * (f, f, f) + alpha * C``. With ``colormap="magenta-green"`` ``C = (m, f, m)``, so where the
    images agree the result stays grey, where the MRI is brighter it turns magenta, where the TRUS is
    brighter green; with a Matplotlib colormap name (e.g. ``"hot"``) ``C`` is that colormap of ``m``.
    ``alpha = 0`` shows the fixed image alone.

    Raises:
        InputError: the images are not on one grid, ``alpha`` is outside [0, 1], or the colormap is unknown.
    """
    check_same_grid(fixed, moving_on_fixed, "fixed image", "moving image (resampled onto the fixed grid)")
    rgb = _blend_arrays(_normalized_array(sitk.GetArrayViewFromImage(fixed)),
                        _normalized_array(sitk.GetArrayViewFromImage(moving_on_fixed)), alpha, colormap)
    out = sitk.GetImageFromArray(rgb, isVector=True)
    out.CopyInformation(fixed)
    return out


# ------------------------------------------------------------------------------------------------- slices
def centroid_index(mask: sitk.Image) -> tuple[int, int, int]:
    """ITK ``(x, y, z)`` index of the voxel nearest the physical centroid of ``mask``'s foreground (> 0).

    Raises:
        InputError: the mask is not a 3D scalar image or is empty.
    """
    check_image(mask, "centre mask")
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(mask > 0, sitk.sitkUInt8))
    if not stats.HasLabel(1):
        raise InputError("centre mask is empty: no foreground voxel to centre the slices on")
    continuous = mask.TransformPhysicalPointToContinuousIndex(stats.GetCentroid(1))
    return tuple(int(np.clip(np.floor(c + 0.5), 0, n - 1)) for c, n in zip(continuous, mask.GetSize()))


@dataclass(frozen=True, eq=False)
class SlicePlane:
    """One orthogonal slice of a 3D grid laid out for display with true millimetre proportions.

    The slice follows the grid's own axes (no reslicing): ``normal_axis`` is the ITK axis (0 = x, 1 = y,
    2 = z) closest to the view's anatomical normal, fixed at ``slice_index``. :meth:`extract` returns a 2D
    array whose columns run along ``h_axis`` and rows along ``v_axis``, flipped where needed so that the
    pixel-centre coordinates ``h_mm`` (columns) and ``v_mm`` (rows) increase with the array index. For a
    grid aligned with LPS these are the LPS coordinates (mm) named by ``xlabel``/``ylabel``; for an oblique
    grid they are millimetres along the grid axis nearest to that anatomical axis. Draw with
    ``imshow(a, origin="lower", extent=plane.extent, aspect="equal")`` and ``contour(plane.h_mm, plane.v_mm, m)``,
    then ``invert_yaxis()`` when ``invert_y`` (axial views, anterior up).
    """

    view: str
    normal_axis: int
    slice_index: int
    h_axis: int
    v_axis: int
    h_flip: bool
    v_flip: bool
    h_mm: np.ndarray
    v_mm: np.ndarray
    xlabel: str
    ylabel: str
    invert_y: bool

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(left, right, bottom, top) outer pixel edges in mm, for ``imshow(..., origin="lower")``."""
        dh = self.h_mm[1] - self.h_mm[0] if self.h_mm.size > 1 else 1.0
        dv = self.v_mm[1] - self.v_mm[0] if self.v_mm.size > 1 else 1.0
        return (float(self.h_mm[0] - dh / 2), float(self.h_mm[-1] + dh / 2),
                float(self.v_mm[0] - dv / 2), float(self.v_mm[-1] + dv / 2))

    def extract(self, volume: sitk.Image | np.ndarray) -> np.ndarray:
        """The 2D slice (rows ``v``, columns ``h``) of a SimpleITK image or a ``[z, y, x, ...]`` array
        (trailing axes, e.g. RGB, are kept)."""
        array = sitk.GetArrayViewFromImage(volume) if isinstance(volume, sitk.Image) else np.asarray(volume)
        # NumPy axis of ITK axis a is 2 - a.
        plane = np.take(array, self.slice_index, axis=2 - self.normal_axis)
        remaining = [a for a in (2, 1, 0) if a != self.normal_axis]  # ITK axes in NumPy order after take
        plane = np.moveaxis(plane, [remaining.index(self.v_axis), remaining.index(self.h_axis)], [0, 1])
        if self.v_flip:
            plane = plane[::-1]
        if self.h_flip:
            plane = plane[:, ::-1]
        return plane

    def index_of(self, row: int, column: int) -> tuple[int, int, int]:
        """ITK ``(x, y, z)`` index of pixel ``[row, column]`` of :meth:`extract`'s result."""
        index = [0, 0, 0]
        index[self.normal_axis] = self.slice_index
        index[self.v_axis] = len(self.v_mm) - 1 - row if self.v_flip else row
        index[self.h_axis] = len(self.h_mm) - 1 - column if self.h_flip else column
        return tuple(index)


def _axis_assignment(direction: np.ndarray) -> list[int]:
    """For L, P, S: the grid axis (permutation) whose direction is closest, maximising the total alignment."""
    return list(max(itertools.permutations(range(3)),
                    key=lambda perm: sum(abs(direction[anat, axis]) for anat, axis in enumerate(perm))))


def orthogonal_planes(image: sitk.Image, index: Optional[Sequence[int]] = None) -> list[SlicePlane]:
    """Axial, coronal and sagittal :class:`SlicePlane` of ``image``'s grid through the ITK ``(x, y, z)``
    ``index`` (default: the volume centre), e.g. ``orthogonal_planes(trus, centroid_index(gland))``."""
    check_image(image, "image to slice")
    size = np.array(image.GetSize())
    index = size // 2 if index is None else np.asarray(index, dtype=int)
    if index.shape != (3,) or np.any(index < 0) or np.any(index >= size):
        raise InputError(f"slice index {tuple(index)} lies outside the image of size {tuple(size)}")
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)  # column a = LPS direction of axis a
    origin, spacing = np.asarray(image.GetOrigin(), float), np.asarray(image.GetSpacing(), float)
    axis_of = _axis_assignment(direction)

    def along(vector: np.ndarray) -> tuple[int, bool, np.ndarray]:
        """Grid axis nearest to ``vector``, whether to flip it, and ascending coordinates along ``vector``."""
        anat = int(np.argmax(np.abs(vector)))
        axis = axis_of[anat]
        sign = float(np.sign(vector[anat]) * np.sign(direction[anat, axis]) or 1.0)
        # Voxel i of the axis lies at ``d . origin + i * spacing`` mm along the axis direction d, hence at
        # ``sign *`` that along ``vector`` (exactly the LPS coordinate when d is +-vector); make it ascending.
        coords = sign * (direction[:, axis] @ origin + np.arange(size[axis]) * spacing[axis])
        flip = sign < 0
        return axis, flip, coords[::-1] if flip else coords

    planes = []
    for view, normal, right, up in _VIEWS:
        normal_axis = axis_of[int(np.argmax(np.abs(normal)))]
        h_axis, h_flip, h_mm = along(right)
        # The axial "up" is anterior (-P): keep P ascending in the array and invert the display axis.
        invert_y = bool(up.sum() < 0)
        v_axis, v_flip, v_mm = along(-up if invert_y else up)
        planes.append(SlicePlane(view, normal_axis, int(index[normal_axis]), h_axis, v_axis, h_flip, v_flip,
                                 h_mm, v_mm, f"{_AXIS_NAMES[int(np.argmax(np.abs(right)))]} (mm)",
                                 f"{_AXIS_NAMES[int(np.argmax(np.abs(up)))]} (mm)", invert_y))
    return planes


# ------------------------------------------------------------------------------------------------- figure
def _check_labels(fixed: sitk.Image, labels: Optional[Mapping[str, sitk.Image]], role: str) -> dict[str, sitk.Image]:
    labels = dict(labels or {})
    for name, label in labels.items():
        check_same_grid(fixed, label, "fixed image", f"{role} label {name!r}")
    return labels


def _colour_table(fixed_names: Sequence[str], moving_names: Sequence[str]) -> dict[tuple[str, str], str]:
    table = {("fixed", n): c for n, c in zip(fixed_names, itertools.cycle(FIXED_COLOURS))}
    table.update({("moving", n): c for n, c in zip(moving_names, itertools.cycle(MOVING_COLOURS))})
    return table


def draw_outline(ax, plane, section: np.ndarray, colour, style: str = "-") -> None:
    """Outline of the 2D boolean ``section`` (rows/columns of ``plane``, in mm) on ``ax``; nothing when the
    section is empty or full. ``plane`` is a :class:`SlicePlane` or anything with ``h_mm``/``v_mm``."""
    if section.any() and not section.all():
        ax.contour(plane.h_mm, plane.v_mm, section.astype(np.float32), levels=[0.5], colors=[colour],
                   linestyles=[style], linewidths=1.2)


def frame_view(ax, plane, title: str) -> None:
    """Limits (mm, radiological orientation), title and axis labels of one slice view."""
    left, right, bottom, top = plane.extent
    ax.set_xlim(left, right)
    ax.set_ylim((top, bottom) if plane.invert_y else (bottom, top))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(plane.xlabel, fontsize=8)
    ax.set_ylabel(plane.ylabel, fontsize=8)
    ax.tick_params(labelsize=7)


def write_overlay_png(path: str | os.PathLike, fixed: sitk.Image, moving_before: sitk.Image,
                      moving_after: sitk.Image, fixed_contours: Optional[Mapping[str, sitk.Image]] = None,
                      moving_contours_before: Optional[Mapping[str, sitk.Image]] = None,
                      moving_contours_after: Optional[Mapping[str, sitk.Image]] = None, mode: str = "blend",
                      title: Optional[str] = None, overwrite: bool = True, *,
                      centre_mask: Optional[sitk.Image] = None, alpha: float = 0.5,
                      colormap: str = "magenta-green", squares_mm: float = 10.0, dpi: int = 100,
                      figsize_in: tuple[float, float] = (11.0, 8.0)) -> Path:
    """Write a before/after registration overlay figure as a PNG (atomically); return ``path``.

    Rows: "before registration" (``moving_before``) and "after registration" (``moving_after``), both the
    moving image already resampled onto the fixed grid. Columns: axial, coronal and sagittal slices of the
    fixed grid (see :func:`orthogonal_planes`) through the centroid of ``centre_mask`` (default: the first
    non-empty label of ``fixed_contours``, e.g. the TRUS gland; the volume centre when there is none),
    drawn with true mm proportions. ``mode="blend"`` shows the fixed image in grey blended with the moving
    image (:func:`blend`, ``alpha``, ``colormap``); ``mode="checkerboard"`` a grey :func:`checkerboard` with
    ``squares_mm`` squares. Outlines (``> 0``) of ``fixed_contours`` (solid) and of the moving labels on
    the fixed grid (dashed; ``moving_contours_before`` on the top row, ``..._after`` on the bottom) are
    drawn in distinct colours named in a legend (the dict keys). The image is ``figsize_in * dpi`` pixels.

    Raises:
        InputError: an image or label (named in the message) is not on the fixed grid, or a bad option.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if mode not in ("blend", "checkerboard"):
        raise InputError(f"overlay mode must be 'blend' or 'checkerboard', got {mode!r}")
    check_same_grid(fixed, moving_before, "fixed image", "moving image before registration")
    check_same_grid(fixed, moving_after, "fixed image", "moving image after registration")
    fixed_labels = _check_labels(fixed, fixed_contours, "fixed")
    rows = [("before registration", moving_before, _check_labels(fixed, moving_contours_before, "moving (before)")),
            ("after registration", moving_after, _check_labels(fixed, moving_contours_after, "moving (after)"))]
    if centre_mask is not None:
        check_same_grid(fixed, centre_mask, "fixed image", "centre mask")
        centre = centroid_index(centre_mask)
    else:
        non_empty = [m for m in fixed_labels.values() if np.any(sitk.GetArrayViewFromImage(m) > 0)]
        centre = centroid_index(non_empty[0]) if non_empty else None
    planes = orthogonal_planes(fixed, centre)
    moving_names = list(dict.fromkeys(n for _, _, labels in rows for n in labels))
    colours = _colour_table(list(fixed_labels), moving_names)
    fixed01 = _normalized_array(sitk.GetArrayViewFromImage(fixed))

    with atomic_output(path, overwrite) as tmp:
        fig = Figure(figsize=figsize_in, dpi=dpi, layout="constrained")
        FigureCanvasAgg(fig)
        grid = fig.add_gridspec(3, 3, height_ratios=[1.0, 1.0, 0.08])
        for r, (row_name, moving, moving_labels) in enumerate(rows):
            if mode == "checkerboard":
                composite, cmap = sitk.GetArrayViewFromImage(checkerboard(fixed, moving, squares_mm)), "gray"
            else:
                composite, cmap = None, None
                moving01 = _normalized_array(sitk.GetArrayViewFromImage(moving))
            for c, plane in enumerate(planes):
                ax = fig.add_subplot(grid[r, c])
                if composite is not None:
                    shown = plane.extract(composite)
                else:
                    shown = _blend_arrays(plane.extract(fixed01), plane.extract(moving01), alpha, colormap)
                ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0, origin="lower", extent=plane.extent,
                          aspect="equal", interpolation="nearest")
                outlines = [(("fixed", n), m, "-") for n, m in fixed_labels.items()]
                outlines += [(("moving", n), m, "--") for n, m in moving_labels.items()]
                for key, mask, style in outlines:
                    draw_outline(ax, plane, plane.extract(mask) > 0, colours[key], style)
                frame_view(ax, plane, f"{row_name}\n{plane.view} (slice {plane.slice_index})")
        legend_ax = fig.add_subplot(grid[2, :])
        legend_ax.axis("off")
        handles = [Line2D([], [], color=colour, linestyle="-" if role == "fixed" else "--", label=name)
                   for (role, name), colour in colours.items()]
        if handles:
            legend_ax.legend(handles=handles, loc="center", ncol=min(len(handles), 6), frameon=False, fontsize=9)
        if title:
            fig.suptitle(title)
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)
