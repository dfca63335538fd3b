"""Spatial transforms of learned registration in torch, tied to physical space (LPS, mm) through SimpleITK.

Conventions used by every function of :mod:`MRITRUSFusionLib.registration.learned`:

* **Image tensors** are ``(B, C, D, H, W)``, laid out like ``sitk.GetArrayFromImage``: tensor axis
  ``D`` is the image's ``k`` (third ITK index), ``H`` is ``j`` and ``W`` is ``i``. A tensor "on a grid"
  means its voxel ``[d, h, w]`` sits at the physical point of ITK index ``(i, j, k) = (w, h, d)`` of that
  grid's ``sitk.Image`` (origin, spacing and direction included).
* **Dense displacement fields (DDF)** are ``(B, 3, D, H, W)`` on the *fixed* (TRUS) grid and are *pulled*:
  ``warped[p] = moving[p + u[p]]``, where ``moving`` is a tensor on the same grid (e.g. the MRI resampled
  onto the TRUS grid). Two unit systems, selected by ``units``:

  - ``"voxel"`` (default, MONAI's ``Warp``/``DVF2DDF`` convention): channel ``c`` is the displacement
    along tensor axis ``c`` — channel 0 along ``D`` (``k``), 1 along ``H`` (``j``), 2 along ``W`` (``i``) —
    in voxels of the grid;
  - ``"normalized"`` (``torch.nn.functional.grid_sample`` convention, ``align_corners=True``): channel 0
    along ``W`` (``i``), 1 along ``H`` (``j``), 2 along ``D`` (``k``), in units where -1 and +1 are the
    centres of the first and last voxel of the axis, so a shift of 1 is ``(size - 1) / 2`` voxels.
* **Physical displacement fields** are ``(B, 3, D, H, W)`` in mm with channels LPS ``(x, y, z)``, as in
  an ITK displacement field: fixed point ``x`` maps to moving point ``x + u(x)``.
* **Rigid parameters** are ``(tx, ty, tz, ax, ay, az)`` (the order of seed 002): translations in mm along
  LPS x, y, z and rotation angles about the LPS x, y, z axes (degrees by default, radians with
  ``degrees=False``). The rotation is ``R = Rz(az) · Ry(ay) · Rx(ax)`` (rotate about x first; ITK
  ``Euler3DTransform`` with ``ComputeZYX`` on, Euler "sxyz" of ``transformations.py``) and the map is
  ``T(x) = R (x - c) + c + t`` about a stated centre ``c`` (mm), mapping a TRUS point to an MRI point.

Every grid axis used for warping needs at least 2 voxels (normalised coordinates divide by ``size - 1``).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ...errors import InputError

#: Unit systems a DDF can be given in (see the module docstring).
DDF_UNITS = ("voxel", "normalized")
#: Scaling-and-squaring steps of seed 001 (``v / 2**7`` composed with itself 7 times).
DEFAULT_INTEGRATION_STEPS = 7

ArrayLike = Union[Sequence[float], np.ndarray, torch.Tensor]


# ----------------------------------------------------------------------------------------------------------
# Grid geometry
# ----------------------------------------------------------------------------------------------------------

def _linear_part(image: sitk.Image) -> np.ndarray:
    """``Direction · diag(spacing)`` (3×3, float64): mm per unit step of ITK index ``(i, j, k)`` (columns)."""
    if image.GetDimension() != 3:
        raise InputError(f"expected a 3D image, got {image.GetDimension()}D")
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    return direction @ np.diag(np.asarray(image.GetSpacing(), dtype=np.float64))


def index_to_physical_affine(image: sitk.Image, axis_order: str = "ijk",
                             dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The 4×4 homogeneous matrix mapping a (continuous) voxel index of ``image`` to its LPS point in mm.

    ``p = origin + Direction · diag(spacing) · index`` (ITK's ``TransformContinuousIndexToPhysicalPoint``).

    Args:
        image: any 3D ``sitk.Image``; only its geometry is used.
        axis_order: ``"ijk"`` for ITK index order ``(i, j, k)``, ``"dhw"`` for tensor axis order
            ``(d, h, w) = (k, j, i)``.
        dtype: dtype of the result (float64 by default: geometry is kept in double precision).

    Returns:
        ``(4, 4)`` tensor ``A`` with ``A @ [index, 1] = [p_mm, 1]``.
    """
    if axis_order not in ("ijk", "dhw"):
        raise ValueError(f"axis_order must be 'ijk' or 'dhw', got {axis_order!r}")
    matrix = _linear_part(image)
    if axis_order == "dhw":
        matrix = matrix[:, ::-1]
    affine = np.eye(4)
    affine[:3, :3] = matrix
    affine[:3, 3] = image.GetOrigin()
    return torch.as_tensor(affine.copy(), dtype=dtype)


def physical_to_index_affine(image: sitk.Image, axis_order: str = "ijk",
                             dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Inverse of :func:`index_to_physical_affine`: LPS mm → continuous voxel index of ``image``."""
    return torch.linalg.inv(index_to_physical_affine(image, axis_order, torch.float64)).to(dtype)


def physical_grid(image: sitk.Image, dtype: torch.dtype = torch.float64,
                  device: Optional[torch.device] = None) -> torch.Tensor:
    """LPS coordinates (mm) of every voxel centre of ``image``: a ``(D, H, W, 3)`` tensor, last axis ``x, y, z``."""
    size_dhw = image.GetSize()[::-1]
    axes = [torch.arange(n, dtype=torch.float64) for n in size_dhw]
    index_dhw = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (D, H, W, 3) as (d, h, w)
    affine = index_to_physical_affine(image, "dhw")
    points = index_dhw @ affine[:3, :3].T + affine[:3, 3]
    return points.to(dtype=dtype, device=device)


# ----------------------------------------------------------------------------------------------------------
# DDF unit conversions
# ----------------------------------------------------------------------------------------------------------

def _check_units(units: str) -> None:
    if units not in DDF_UNITS:
        raise ValueError(f"units must be one of {DDF_UNITS}, got {units!r}")


def _check_field(field: torch.Tensor, name: str = "ddf") -> None:
    if field.dim() != 5 or field.shape[1] != 3:
        raise InputError(f"{name}: expected a (B, 3, D, H, W) tensor, got shape {tuple(field.shape)}")
    if min(field.shape[2:]) < 2:
        raise InputError(f"{name}: every spatial axis needs at least 2 voxels, got {tuple(field.shape[2:])}")


def _half_extent(field: torch.Tensor) -> torch.Tensor:
    """``(size - 1) / 2`` per tensor axis (D, H, W), shaped to broadcast against a ``(B, 3, D, H, W)`` field."""
    sizes = torch.tensor(field.shape[2:], dtype=field.dtype, device=field.device)
    return ((sizes - 1) / 2).view(1, 3, 1, 1, 1)


def normalized_to_voxel_ddf(ddf: torch.Tensor) -> torch.Tensor:
    """A normalised DDF (grid_sample order W, H, D; ``align_corners=True``) as a voxel DDF (order D, H, W)."""
    _check_field(ddf)
    return ddf.flip(1) * _half_extent(ddf)


def voxel_to_normalized_ddf(ddf: torch.Tensor) -> torch.Tensor:
    """A voxel DDF (order D, H, W) as a normalised DDF (grid_sample order W, H, D; ``align_corners=True``)."""
    _check_field(ddf)
    return (ddf / _half_extent(ddf)).flip(1)


def _to_voxel(ddf: torch.Tensor, units: str) -> torch.Tensor:
    _check_units(units)
    _check_field(ddf)
    return ddf if units == "voxel" else normalized_to_voxel_ddf(ddf)


def _from_voxel(ddf: torch.Tensor, units: str) -> torch.Tensor:
    _check_units(units)
    return ddf if units == "voxel" else voxel_to_normalized_ddf(ddf)


def _check_grid_shape(field: torch.Tensor, grid: sitk.Image, name: str) -> None:
    if tuple(field.shape[2:]) != tuple(grid.GetSize()[::-1]):
        raise InputError(f"{name}: spatial shape {tuple(field.shape[2:])} (D, H, W) does not match the grid of "
                         f"size {grid.GetSize()} (i, j, k)")


def ddf_to_displacement_mm(ddf: torch.Tensor, grid: sitk.Image, units: str = "voxel") -> torch.Tensor:
    """A DDF on ``grid`` as a physical displacement field: ``(B, 3, D, H, W)``, mm, channels LPS ``x, y, z``.

    Args:
        ddf: ``(B, 3, D, H, W)`` field on ``grid`` in ``units`` (see the module docstring).
        grid: the fixed grid the field lives on (its spacing and direction turn voxels into mm).
        units: ``"voxel"`` or ``"normalized"``.
    """
    voxel = _to_voxel(ddf, units)
    _check_grid_shape(voxel, grid, "ddf")
    matrix = index_to_physical_affine(grid, "dhw", voxel.dtype)[:3, :3].to(voxel.device)
    return torch.einsum("rc,bc...->br...", matrix, voxel)


def displacement_mm_to_ddf(displacement: torch.Tensor, grid: sitk.Image, units: str = "voxel") -> torch.Tensor:
    """Inverse of :func:`ddf_to_displacement_mm`: an LPS mm field on ``grid`` as a DDF in ``units``."""
    _check_field(displacement, "displacement")
    _check_grid_shape(displacement, grid, "displacement")
    inverse = physical_to_index_affine(grid, "dhw", displacement.dtype)[:3, :3].to(displacement.device)
    return _from_voxel(torch.einsum("rc,bc...->br...", inverse, displacement), units)


def transform_to_ddf(transform: sitk.Transform, grid: sitk.Image, units: str = "voxel",
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The DDF on ``grid`` of a SimpleITK transform (fixed point → moving point): ``(1, 3, D, H, W)``.

    ``warp(moving_on_grid, transform_to_ddf(T, grid))`` then equals ``sitk.Resample(moving, grid, T)`` for a
    moving image whose own grid is ``grid`` (up to interpolation at the border).
    """
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, grid.GetSize(), grid.GetOrigin(),
                                              grid.GetSpacing(), grid.GetDirection())
    array = torch.from_numpy(sitk.GetArrayFromImage(field)).permute(3, 0, 1, 2)[None]  # (1, 3[x,y,z], D, H, W)
    return displacement_mm_to_ddf(array, grid, units).to(dtype)


def ddf_to_transform(ddf: torch.Tensor, grid: sitk.Image, units: str = "voxel",
                     output_grid: Optional[sitk.Image] = None,
                     extrapolate: bool = False) -> sitk.DisplacementFieldTransform:
    """An ITK displacement-field transform (TRUS point → MRI point, LPS mm) from a DDF predicted on ``grid``.

    The transform maps ``x`` to ``x + u_mm(x)`` with ``u_mm`` from :func:`ddf_to_displacement_mm`, linearly
    interpolated between voxel centres; write it with ``sitk.WriteTransform(t, "name.h5")``. When the moving
    tensor was the MRI resampled onto ``grid`` through an initial transform ``T0``, the full registration
    is the composite ``T0 ∘ t`` (``CompositeTransform`` with ``T0`` added first, ``t`` second).

    Args:
        ddf: ``(3, D, H, W)`` or ``(1, 3, D, H, W)`` field on ``grid`` in ``units``.
        grid: the grid the field was predicted on (typically the network's crop of the TRUS).
        units: ``"voxel"`` or ``"normalized"`` (see the module docstring).
        output_grid: when given (e.g. the full TRUS image), the mm field is resampled onto this grid
            (trilinear, in physical space) and the transform holds it there.
        extrapolate: with ``output_grid``, points outside ``grid`` take the displacement of the nearest
            voxel of ``grid``; by default they get zero displacement (identity outside the predicted region,
            which is also what ITK applies outside any displacement field's domain).

    Returns:
        A ``sitk.DisplacementFieldTransform`` holding a float64 vector field.
    """
    if ddf.dim() == 4:
        ddf = ddf[None]
    if ddf.dim() != 5 or ddf.shape[0] != 1:
        raise InputError(f"ddf: expected one field (3, D, H, W) or (1, 3, D, H, W), got {tuple(ddf.shape)}")
    displacement = ddf_to_displacement_mm(ddf.detach().to("cpu", torch.float64), grid, units)
    field = sitk.GetImageFromArray(displacement[0].permute(1, 2, 3, 0).numpy(), isVector=True)
    field.CopyInformation(grid)
    if output_grid is not None:
        field = sitk.Resample(field, output_grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64,
                              bool(extrapolate))
    return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))


# ----------------------------------------------------------------------------------------------------------
# Warping and integration
# ----------------------------------------------------------------------------------------------------------

def _identity_grid(shape_dhw: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Normalised coordinates of every voxel: ``(1, 3, D, H, W)`` in grid_sample order (W, H, D)."""
    axes = [torch.linspace(-1.0, 1.0, n, dtype=dtype, device=device) for n in shape_dhw]
    d, h, w = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([w, h, d], dim=0)[None]


def warp(moving: torch.Tensor, ddf: torch.Tensor, units: str = "voxel", mode: str = "bilinear",
         padding_mode: str = "zeros") -> torch.Tensor:
    """Pull ``moving`` through ``ddf``: ``out[p] = moving[p + u[p]]`` (differentiable; ``grid_sample``).

    Same result as ``monai.networks.blocks.Warp`` for a voxel DDF (MONAI's default padding is
    ``"border"``; this function's is ``"zeros"``, like ``sitk.Resample``'s default value 0).

    Args:
        moving: ``(B, C, D, H, W)`` image on the fixed grid (e.g. MRI resampled onto the TRUS grid).
        ddf: ``(B, 3, D, H, W)`` (or ``(1, 3, ...)``, broadcast over the batch) field in ``units``.
        units: ``"voxel"`` or ``"normalized"`` (see the module docstring).
        mode: ``"bilinear"`` (trilinear in 3D) or ``"nearest"`` (labels; not differentiable).
        padding_mode: value outside ``moving``: ``"zeros"``, ``"border"`` or ``"reflection"``.

    Returns:
        ``(B, C, D, H, W)`` warped image, same dtype as ``moving``.
    """
    _check_units(units)
    _check_field(ddf)
    if moving.dim() != 5 or tuple(moving.shape[2:]) != tuple(ddf.shape[2:]):
        raise InputError(f"moving: expected (B, C, D, H, W) with spatial shape {tuple(ddf.shape[2:])}, "
                         f"got {tuple(moving.shape)}")
    ddf = ddf.to(moving.dtype)
    normalized = ddf if units == "normalized" else voxel_to_normalized_ddf(ddf)
    grid = _identity_grid(ddf.shape[2:], moving.dtype, moving.device) + normalized
    grid = grid.expand(moving.shape[0], -1, -1, -1, -1).permute(0, 2, 3, 4, 1)  # (B, D, H, W, 3[x, y, z])
    return F.grid_sample(moving, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


def compose_ddf(first: torch.Tensor, second: torch.Tensor, units: str = "voxel",
                padding_mode: str = "border") -> torch.Tensor:
    """The DDF of ``p -> q + second(q)`` with ``q = p + first(p)``: ``first + second∘(id + first)``.

    Warping by the result equals warping by ``second`` and then by ``first``
    (``warp(warp(m, second), first)``, up to interpolation). Both fields in ``units``.
    """
    voxel_first, voxel_second = _to_voxel(first, units), _to_voxel(second, units)
    return _from_voxel(voxel_first + warp(voxel_second, voxel_first, "voxel", padding_mode=padding_mode), units)


def integrate_velocity(velocity: torch.Tensor, steps: int = DEFAULT_INTEGRATION_STEPS, units: str = "voxel",
                       padding_mode: str = "border") -> torch.Tensor:
    """Scaling and squaring: the DDF ``exp(v)`` of a stationary velocity field ``v`` (seed 001, 7 steps).

    ``u = v / 2**steps``, then ``steps`` times ``u <- u + u∘(id + u)``. A zero field gives the identity
    (zero DDF) and a constant field ``v`` gives ``v`` exactly.

    Equivalent to ``monai.networks.blocks.DVF2DDF(num_steps=steps, padding_mode=padding_mode)`` for a
    voxel field (same units, channel order and ``align_corners=True`` sampling). The default padding here is
    ``"border"`` (the field is continued by its border value beyond the grid) rather than DVF2DDF's
    ``"zeros"``, which would shrink displacements near the border at every squaring.

    Args:
        velocity: ``(B, 3, D, H, W)`` stationary velocity field, same units as the result.
        steps: number of squarings (>= 0; 0 returns ``velocity`` itself).
        units: ``"voxel"`` or ``"normalized"``; the result has the same units.
        padding_mode: ``grid_sample`` padding used when composing the field with itself.

    Returns:
        ``(B, 3, D, H, W)`` displacement field in ``units``.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    displacement = _to_voxel(velocity, units) / (2 ** steps)
    for _ in range(steps):
        displacement = displacement + warp(displacement, displacement, "voxel", padding_mode=padding_mode)
    return _from_voxel(displacement, units)


# ----------------------------------------------------------------------------------------------------------
# Rigid parameters
# ----------------------------------------------------------------------------------------------------------

def rigid_params_to_matrix(params: torch.Tensor, degrees: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation matrices and translations of rigid parameters (differentiable).

    Args:
        params: ``(B, 6)`` tensor ``(tx, ty, tz, ax, ay, az)``: mm along LPS x, y, z; angles about LPS
            x, y, z in degrees (or radians with ``degrees=False``).
        degrees: unit of the angles.

    Returns:
        ``(R, t)``: ``(B, 3, 3)`` rotation ``R = Rz(az) Ry(ay) Rx(ax)`` and ``(B, 3)`` translation in mm; the
        transform about centre ``c`` is ``T(x) = R (x - c) + c + t``.
    """
    if params.dim() != 2 or params.shape[1] != 6:
        raise InputError(f"params: expected a (B, 6) tensor, got shape {tuple(params.shape)}")
    angles = params[:, 3:] * (math.pi / 180.0) if degrees else params[:, 3:]
    cos, sin = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])

    def stack(rows):
        return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)

    rx = stack([[one, zero, zero], [zero, cos[:, 0], -sin[:, 0]], [zero, sin[:, 0], cos[:, 0]]])
    ry = stack([[cos[:, 1], zero, sin[:, 1]], [zero, one, zero], [-sin[:, 1], zero, cos[:, 1]]])
    rz = stack([[cos[:, 2], -sin[:, 2], zero], [sin[:, 2], cos[:, 2], zero], [zero, zero, one]])
    return rz @ ry @ rx, params[:, :3]


def rigid_params_to_ddf(params: torch.Tensor, grid: sitk.Image, center_mm: ArrayLike, degrees: bool = True,
                        units: str = "voxel") -> torch.Tensor:
    """The DDF on ``grid`` of the rigid transforms ``T(x) = R (x - c) + c + t`` (differentiable in ``params``).

    Warping a tensor on ``grid`` by it equals ``sitk.Resample`` through :func:`rigid_params_to_euler` of the
    same parameters. Returns ``(B, 3, D, H, W)`` in ``units``, dtype of ``params``.
    """
    rotation, translation = rigid_params_to_matrix(params, degrees)
    centre = torch.as_tensor(np.asarray(center_mm, dtype=np.float64), dtype=params.dtype, device=params.device)
    points = physical_grid(grid, params.dtype, params.device)  # (D, H, W, 3)
    relative = points - centre
    mapped = torch.einsum("brc,dhwc->bdhwr", rotation, relative) + (centre + translation)[:, None, None, None]
    displacement = (mapped - points).permute(0, 4, 1, 2, 3)
    return displacement_mm_to_ddf(displacement, grid, units)


def rigid_params_to_euler(params: ArrayLike, center_mm: ArrayLike, degrees: bool = True) -> sitk.Euler3DTransform:
    """An ITK ``Euler3DTransform`` (``ComputeZYX`` on) mapping a TRUS point to an MRI point.

    ``T(x) = Rz(az) Ry(ay) Rx(ax) (x - c) + c + t`` with ``c = center_mm``. ITK files keep ``ComputeZYX``
    (4th fixed parameter), so ``sitk.ReadTransform`` restores the same map.

    Args:
        params: 6 numbers ``(tx, ty, tz, ax, ay, az)`` (sequence, array or tensor of shape (6,) or (1, 6)):
            mm, and degrees (or radians with ``degrees=False``).
        center_mm: centre of rotation ``c``, LPS mm (e.g. the centre of the network's input patch).
        degrees: unit of the angles.
    """
    values = params.detach().cpu().double().numpy() if isinstance(params, torch.Tensor) else np.asarray(params, float)
    values = values.reshape(-1)
    if values.size != 6:
        raise InputError(f"params: expected 6 rigid parameters, got {values.size}")
    angles = np.deg2rad(values[3:]) if degrees else values[3:]
    transform = sitk.Euler3DTransform()
    transform.SetComputeZYX(True)
    transform.SetCenter([float(v) for v in np.asarray(center_mm, dtype=float).reshape(3)])
    transform.SetRotation(*[float(a) for a in angles])
    transform.SetTranslation([float(v) for v in values[:3]])
    return transform


def _nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(matrix)
    rotation = u @ vt
    if np.linalg.det(rotation) < 0:
        raise InputError("transform: not a rotation (its matrix reflects space)")
    return rotation


def euler_to_rigid_params(transform: sitk.Transform, center_mm: Optional[ArrayLike] = None,
                          degrees: bool = True) -> np.ndarray:
    """Rigid parameters ``(tx, ty, tz, ax, ay, az)`` of a linear, rigid SimpleITK transform about a centre.

    Inverse of :func:`rigid_params_to_euler`. Any linear transform is read through its action on points
    (Euler in either angle order, affine, composite); its matrix is projected onto the nearest rotation,
    so a slightly non-orthogonal matrix (rounded text files) is accepted.

    Args:
        transform: linear SimpleITK transform (TRUS point → MRI point).
        center_mm: the centre ``c`` the parameters refer to; default the transform's own centre (if it has
            one, else the origin).
        degrees: unit of the returned angles.

    Returns:
        ``(6,)`` float64 array; angles in ``(-180, 180]`` degrees with ``|ay| <= 90``.
    """
    if not transform.IsLinear():
        raise InputError(f"transform: expected a linear (rigid) transform, got {transform.GetName()}")
    offset = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    matrix = np.column_stack([np.asarray(transform.TransformPoint(tuple(axis))) - offset for axis in np.eye(3)])
    rotation = _nearest_rotation(matrix)
    if center_mm is None:
        specific = transform.Downcast() if hasattr(transform, "Downcast") else transform
        center = np.asarray(specific.GetCenter(), float) if hasattr(specific, "GetCenter") else np.zeros(3)
    else:
        center = np.asarray(center_mm, float).reshape(3)
    # T(x) = M x + offset = R (x - c) + c + t  =>  t = M c + offset - c
    translation = matrix @ center + offset - center
    ay = math.asin(float(np.clip(-rotation[2, 0], -1.0, 1.0)))
    if abs(math.cos(ay)) > 1e-9:
        ax = math.atan2(rotation[2, 1], rotation[2, 2])
        az = math.atan2(rotation[1, 0], rotation[0, 0])
    else:  # gimbal lock: only ax - az (or ax + az) is defined; take az = 0
        ax = math.atan2(-rotation[1, 2], rotation[1, 1])
        az = 0.0
    angles = np.array([ax, ay, az])
    return np.concatenate([translation, np.rad2deg(angles) if degrees else angles])
