"""Data for Attention-Reg (seed 002): the authors' sample patches, random rigid perturbations, phantom pairs.

**The sample** (``../shared/data/attention-reg-sample``): one MR patch ``MR_k.npy`` (identical for every
``k``), ten US patches ``US_k.npy`` (uint8, numpy order ``(z, y, x)`` = 32×96×96), a ground truth ``gt.txt``
and per ``k`` a perturbed start ``initialization_k.txt`` (4×4). Split: train ``k`` = 1–6, val 7, 8,
test 0, 9. All ten US patches are crops of *one* US volume ``V`` (and the MR patch of one MR volume), so
the "cases" share their anatomy; they differ in the pose the US was sampled in.

**Convention, worked out from the data** (``scripts/attention_reg_sample_eval.py --check-convention``
re-runs the check). Let a patch voxel with index ``(x, y, z)`` (``x`` fastest, numpy's last axis) have the
point ``p = diag(s) (x, y, z) + o`` of the MR frame. Then

* ``US_k(p) = V(I_k⁻¹ p)`` — US patch ``k`` is the US volume pulled through the *inverse* of its 4×4
  ``I_k`` (``initialization_k``), i.e. ``I_k`` maps a US-volume point to an MR-frame point;
* ``MR(p) ≈ V(G⁻¹ p)`` with ``G`` = ``gt``: the ground truth maps a US point to the corresponding MR point.

Evidence: resampling ``US_k`` through ``I_k I_j⁻¹`` reproduces ``US_j`` with a normalised cross-correlation
(NCC) of 0.99–1.00 over all 45 pairs (vs 0.5–0.8 for the raw patches) once ``s`` and ``o`` take the values
fitted below (``SAMPLE_SPACING_MM``, ``SAMPLE_ORIGIN_MM``); with unit voxels, the plain matrices or other
axis orders it stays at 0.0–0.9. The MR–US check (MR against ``US_k`` moved by ``I_k G⁻¹``) raises the
multi-modal NCC only modestly (MR and US intensities are not linearly related), see the doc page. The
fitted spacing is *not* recorded with the arrays: it is the assumption under which millimetres are
reported (``docs/attention-reg.md``).

**In this project's terms** (TRUS fixed, MRI moving, transforms map TRUS point → MRI point): the TRUS frame
is that of ``V``, the MRI frame the MR patch frame. Case ``k`` becomes

* ``trus``: ``US_k`` as a SimpleITK image whose voxel ``(x, y, z)`` lies at ``I_k⁻¹(diag(s)(x, y, z) + o)``
  (spacing ``s``, a rotated direction, so it is the US volume seen in pose ``k``);
* ``mri``: the MR patch with spacing ``s``, origin ``o`` and identity direction;
* ground truth ``T_true(u) = G u`` and initial estimate ``T_init(u) = I_k u`` (``AffineTransform``).

**Training pairs** follow the paper: a rigid perturbation ``P`` (parameters of :mod:`.spatial`, about the
network patch centre ``c``) drawn uniformly within ±5 mm / ±6° and optionally rescaled to a uniform random
SRE, a current estimate ``T_cur = T_true ∘ P⁻¹``, the MRI resampled through ``T_cur`` onto the network
grid; the target correction is then exactly ``P`` (``T_cur ∘ P = T_true``), learnt with MSE on the 6
parameters.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from ...errors import InputError
from ...training.data_config import ATTENTION_REG_SAMPLE_SPLITS
from ..linear import flatten_linear, matrix_to_affine
from .spatial import rigid_params_to_euler, rigid_params_to_matrix

#: Sample split of the authors' folder (``init{k}`` sub-folders).
SAMPLE_SPLITS = ATTENTION_REG_SAMPLE_SPLITS

#: Voxel spacing (mm, x/y/z = numpy axes 2/1/0) of the sample patches, fitted from the data (see the module
#: docstring); an assumption, the arrays do not record it.
SAMPLE_SPACING_MM = (0.737, 0.508, 2.178)
#: Physical point (mm) of voxel (0, 0, 0) of the sample patches in the MR frame, fitted with the spacing.
SAMPLE_ORIGIN_MM = (35.749, 45.981, -3.671)

#: Paper's perturbation ranges (§3.1): each translation within ±5 mm, each rotation within ±6°.
PAPER_MAX_TRANSLATION_MM = 5.0
PAPER_MAX_ROTATION_DEG = 6.0

#: Default network grid (i, j, k sizes, multiples of 4) and its isotropic spacing in mm.
DEFAULT_PATCH_SIZE = (32, 24, 32)
DEFAULT_PATCH_SPACING_MM = 1.8


def default_sample_root() -> Path:
    """``$MRITRUS_ATTENTION_REG_SAMPLE`` or ``<repo>/../shared/data/attention-reg-sample``."""
    env = os.environ.get("MRITRUS_ATTENTION_REG_SAMPLE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[4] / "shared" / "data" / "attention-reg-sample"


@dataclass
class SampleCase:
    """One ``init{k}`` folder: the arrays, the 4×4 ground truth ``gt`` and start ``init`` (US → MR frame)."""

    index: int
    mr: np.ndarray
    us: np.ndarray
    gt: np.ndarray
    init: np.ndarray


def split_of(index: int) -> str:
    for name, members in SAMPLE_SPLITS.items():
        if index in members:
            return name
    raise InputError(f"sample case {index}: not in any split (0-9)")


def load_sample_case(index: int, root: Optional[os.PathLike] = None) -> SampleCase:
    """Read ``{split}/init{k}/{MR_k,US_k}.npy``, ``initialization_k.txt`` and ``gt.txt``."""
    root = Path(root) if root is not None else default_sample_root()
    folder = root / split_of(index) / f"init{index}"
    try:
        mr = np.load(folder / f"MR_{index}.npy")
        us = np.load(folder / f"US_{index}.npy")
        init = np.loadtxt(folder / f"initialization_{index}.txt")
        gt = np.loadtxt(root / "gt.txt")
    except OSError as error:
        raise InputError(f"attention-reg sample case {index}: cannot read {folder} ({error})") from error
    if mr.shape != us.shape or mr.ndim != 3 or init.shape != (4, 4) or gt.shape != (4, 4):
        raise InputError(f"attention-reg sample case {index}: unexpected shapes {mr.shape}, {us.shape}, "
                         f"{init.shape}, {gt.shape}")
    return SampleCase(index, mr, us, gt, init)


def _patch_image(array: np.ndarray, spacing: Sequence[float], origin: Sequence[float],
                 pose: Optional[np.ndarray] = None) -> sitk.Image:
    """``array`` (z, y, x) as an image whose voxel ``v`` lies at ``pose⁻¹(diag(s) v + o)`` (``pose`` 4×4)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array).astype(np.float32))
    if pose is None:
        image.SetSpacing([float(v) for v in spacing])
        image.SetOrigin([float(v) for v in origin])
        return image
    inverse = np.linalg.inv(np.asarray(pose, dtype=float))
    rotation = inverse[:3, :3]
    u, _, vt = np.linalg.svd(rotation)  # the text matrices are rounded: project onto a rotation
    rotation_exact = u @ vt
    image.SetSpacing([float(v) for v in spacing])
    image.SetDirection(rotation_exact.ravel().tolist())
    image.SetOrigin((rotation @ np.asarray(origin, float) + inverse[:3, 3]).tolist())
    return image


def sample_case_images(case: SampleCase, spacing: Sequence[float] = SAMPLE_SPACING_MM,
                       origin: Sequence[float] = SAMPLE_ORIGIN_MM):
    """``(trus, mri, T_true, T_init)`` of a sample case in physical space (module docstring convention)."""
    trus = _patch_image(case.us, spacing, origin, pose=case.init)
    mri = _patch_image(case.mr, spacing, origin)
    return trus, mri, matrix_to_affine(case.gt), matrix_to_affine(case.init)


def proxy_gland_mask(reference: sitk.Image, fraction: float = 0.35) -> sitk.Image:
    """An ellipsoid centred in ``reference`` with semi-axes ``fraction`` × its extent along each grid axis.

    The sample has no gland mask, so its SRE is measured on the surface of this proxy (a 50×34×49 mm
    ellipsoid on the sample patch with the fitted spacing, roughly a prostate).
    """
    size = np.array(reference.GetSize())
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij"), axis=-1)[..., ::-1]
    centre = (size - 1) / 2.0
    radii = np.maximum(fraction * size, 1.0)
    inside = (((grid - centre) / radii) ** 2).sum(-1) <= 1.0
    mask = sitk.GetImageFromArray(inside.astype(np.uint8))
    mask.CopyInformation(reference)
    return mask


# ------------------------------------------------------------------------------------------------------
# Network grid and intensities
# ------------------------------------------------------------------------------------------------------

def patch_grid(reference: sitk.Image, centre_mm: Sequence[float], size: Sequence[int] = DEFAULT_PATCH_SIZE,
               spacing_mm: float = DEFAULT_PATCH_SPACING_MM) -> sitk.Image:
    """An empty image of ``size`` (i, j, k) and isotropic ``spacing_mm`` centred at ``centre_mm`` with the
    direction of ``reference`` (the TRUS image): the grid the network sees."""
    direction = np.asarray(reference.GetDirection(), float).reshape(3, 3)
    half = (np.asarray(size, float) - 1) / 2.0 * spacing_mm
    origin = np.asarray(centre_mm, float) - direction @ half
    grid = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    grid.SetSpacing([float(spacing_mm)] * 3)
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin(origin.tolist())
    return grid


def image_centre_mm(image: sitk.Image) -> np.ndarray:
    """Physical centre of ``image``'s voxel box."""
    size = np.asarray(image.GetSize(), float)
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2.0).tolist()))


def normalise_patch(array: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Intensities to [0, 1] by the ``low``/``high`` percentiles of the non-zero voxels (zeros = outside)."""
    array = np.asarray(array, dtype=np.float32)
    values = array[array > 0]
    if values.size < 16:
        return np.zeros_like(array)
    lo, hi = np.percentile(values, [low, high])
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((array - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


NORMALISATION = "nonzero-percentile-1-99"


def resample_to_grid(image: sitk.Image, grid: sitk.Image, transform: Optional[sitk.Transform] = None,
                     interpolator=sitk.sitkLinear) -> np.ndarray:
    """``image`` pulled onto ``grid`` through ``transform`` (grid point → image point), ``(D, H, W)`` float32."""
    transform = transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity)
    out = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), grid, transform, interpolator, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


# ------------------------------------------------------------------------------------------------------
# Perturbations
# ------------------------------------------------------------------------------------------------------

def random_rigid_params(rng: np.random.Generator, count: int,
                        max_translation_mm: float = PAPER_MAX_TRANSLATION_MM,
                        max_rotation_deg: float = PAPER_MAX_ROTATION_DEG) -> np.ndarray:
    """``(count, 6)`` parameters, each uniform in ``±max_translation_mm`` (t) or ``±max_rotation_deg`` (angles)."""
    bounds = np.array([max_translation_mm] * 3 + [max_rotation_deg] * 3, dtype=float)
    return rng.uniform(-1.0, 1.0, size=(int(count), 6)) * bounds


def params_sre_mm(params: np.ndarray, points_mm: np.ndarray, centre_mm: Sequence[float]) -> float:
    """Mean displacement (mm) of the absolute LPS ``points_mm`` under the rigid map of ``params`` about
    ``centre_mm`` (convention of :func:`.spatial.rigid_params_to_matrix`): the SRE of a pure perturbation."""
    rotation, translation = rigid_params_to_matrix(torch.as_tensor(np.asarray(params, float)).reshape(1, 6))
    rotation, translation = rotation[0].numpy(), translation[0].numpy()
    centre = np.asarray(centre_mm, float)
    moved = (np.asarray(points_mm, float) - centre) @ rotation.T + centre + translation
    return float(np.linalg.norm(moved - points_mm, axis=1).mean())


def scale_to_sre(params: np.ndarray, target_sre_mm: float, points_mm: np.ndarray,
                 centre_mm: Sequence[float]) -> np.ndarray:
    """``params`` scaled by one factor so that their SRE on ``points_mm`` is ``target_sre_mm`` (paper §3.1;
    the rigid map is close to linear in the scale at these magnitudes, refined by two secant steps)."""
    params = np.asarray(params, float)
    factor = 1.0
    for _ in range(3):
        current = params_sre_mm(params * factor, points_mm, centre_mm)
        if current < 1e-9:
            return params * 0.0
        factor *= target_sre_mm / current
    return params * factor


def perturbed_start(true_transform: sitk.Transform, params: np.ndarray, centre_mm: Sequence[float]) -> sitk.Transform:
    """``T_cur = T_true ∘ P⁻¹`` for the perturbation ``P`` of ``params`` about ``centre_mm``; then the correct
    correction of ``T_cur`` is exactly ``P`` (``T_cur ∘ P = T_true``)."""
    inverse = rigid_params_to_euler(params, centre_mm).GetInverse()
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(true_transform)
    composite.AddTransform(inverse)
    return composite


def apply_correction(current: sitk.Transform, params: np.ndarray, centre_mm: Sequence[float]) -> sitk.Transform:
    """``T_new = T_cur ∘ Δ`` with ``Δ`` the rigid map of ``params`` about ``centre_mm``, flattened to one
    ``AffineTransform`` when ``current`` is linear (else a composite)."""
    delta = rigid_params_to_euler(params, centre_mm)
    if current.IsLinear():
        return flatten_linear(current, delta)
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(current)
    composite.AddTransform(delta)
    return composite


# ------------------------------------------------------------------------------------------------------
# Pair generation
# ------------------------------------------------------------------------------------------------------

@dataclass
class RegistrationSource:
    """One fixed/moving pair with its true transform (TRUS point → MRI point), network-grid centre and, for
    sample cases, the case's own initial estimate ``start``."""

    trus: sitk.Image
    mri: sitk.Image
    true_transform: sitk.Transform
    centre_mm: np.ndarray
    name: str = ""
    start: Optional[sitk.Transform] = None


def sample_sources(indices: Sequence[int], root: Optional[os.PathLike] = None) -> list[RegistrationSource]:
    """Sample cases as sources; the network grid is centred on the TRUS patch centre."""
    sources = []
    for index in indices:
        trus, mri, true, start = sample_case_images(load_sample_case(index, root))
        sources.append(RegistrationSource(trus, mri, true, image_centre_mm(trus), f"sample{index}", start))
    return sources


def phantom_sources(seeds: Sequence[int]) -> list[RegistrationSource]:
    """Small rigid phantom pairs (``generate_phantom`` with no affine part and no deformation): the TRUS
    phantom as fixed, its MRI as moving, the phantom's (rigid) transform as truth."""
    from ...phantom import generate_phantom

    sources = []
    for seed in seeds:
        case = generate_phantom(seed=int(seed), trus_size=(64, 64, 64), trus_spacing=(1.2, 1.2, 1.2),
                                mri_size=(56, 56, 40), mri_spacing=(1.5, 1.5, 2.0), max_affine_scale=0.0,
                                max_affine_shear=0.0, deformation_mm=0.0, max_rotation_deg=4.0,
                                max_translation_mm=3.0)
        true = case.transform
        if hasattr(true, "GetNumberOfTransforms"):
            true = sitk.CompositeTransform(true).GetNthTransform(0)
        sources.append(RegistrationSource(case.trus, case.mri, true, image_centre_mm(case.trus), f"phantom{seed}"))
    return sources


def make_pair(source: RegistrationSource, params: np.ndarray, size: Sequence[int] = DEFAULT_PATCH_SIZE,
              spacing_mm: float = DEFAULT_PATCH_SPACING_MM, centre_offset_mm: Optional[np.ndarray] = None):
    """One training/validation pair: ``(trus_patch, mri_patch, target_params, current_transform, grid)``.

    The network grid is centred at ``source.centre_mm + centre_offset_mm``; the MRI is resampled through the
    perturbed start ``T_true ∘ P⁻¹`` (``P`` about the grid centre), the target is ``params`` (float32).
    """
    centre = np.asarray(source.centre_mm, float) + (0.0 if centre_offset_mm is None else np.asarray(centre_offset_mm))
    grid = patch_grid(source.trus, centre, size, spacing_mm)
    current = perturbed_start(source.true_transform, params, centre)
    trus_patch = normalise_patch(resample_to_grid(source.trus, grid))
    mri_patch = normalise_patch(resample_to_grid(source.mri, grid, current))
    return trus_patch, mri_patch, np.asarray(params, np.float32), current, grid


def make_batch(sources: Sequence[RegistrationSource], rng: np.random.Generator, batch_size: int,
               max_translation_mm: float = PAPER_MAX_TRANSLATION_MM,
               max_rotation_deg: float = PAPER_MAX_ROTATION_DEG, max_sre_mm: Optional[float] = None,
               centre_jitter_mm: float = 3.0, size: Sequence[int] = DEFAULT_PATCH_SIZE,
               spacing_mm: float = DEFAULT_PATCH_SPACING_MM, keep: Optional[Sequence[int]] = None):
    """A random batch as tensors ``(trus (B,1,D,H,W), mri (B,1,D,H,W), target (B,6))``.

    Each item: a random source, a uniform perturbation (paper ranges), rescaled to an SRE uniform in
    ``[0, max_sre_mm]`` on the proxy-gland surface when ``max_sre_mm`` is given, a jittered grid centre.
    ``keep``: indices of the items built (default all); the others are drawn too, so each process of a
    distributed run takes its slice of the batch one process would draw.
    """
    keep = range(int(batch_size)) if keep is None else set(keep)
    trus_list, mri_list, targets = [], [], []
    for index in range(int(batch_size)):
        source = sources[int(rng.integers(len(sources)))]
        params = random_rigid_params(rng, 1, max_translation_mm, max_rotation_deg)[0]
        offset = rng.uniform(-centre_jitter_mm, centre_jitter_mm, size=3)
        if max_sre_mm is not None:
            centre = np.asarray(source.centre_mm) + offset
            points = proxy_surface_points(patch_grid(source.trus, centre, size, spacing_mm))
            params = scale_to_sre(params, float(rng.uniform(0.0, max_sre_mm)), points, centre)
        if index not in keep:
            continue
        trus_patch, mri_patch, target, _, _ = make_pair(source, params, size, spacing_mm, offset)
        trus_list.append(trus_patch)
        mri_list.append(mri_patch)
        targets.append(target)
    return (torch.from_numpy(np.stack(trus_list))[:, None], torch.from_numpy(np.stack(mri_list))[:, None],
            torch.from_numpy(np.stack(targets)))


def proxy_surface_points(reference: sitk.Image, fraction: float = 0.35) -> np.ndarray:
    """Physical surface points of :func:`proxy_gland_mask` of ``reference`` (subsampled to ≤ 400)."""
    from ...metrics.surface import surface_points_mm

    points = surface_points_mm(proxy_gland_mask(reference, fraction))
    step = max(len(points) // 400, 1)
    return np.asarray(points[::step], float)


@dataclass
class ValidationItem:
    """A fixed validation start: the pair, the start estimate (TRUS point → MRI point), the SRE mask."""

    name: str
    source: RegistrationSource
    start: sitk.Transform
    mask: sitk.Image


def validation_items(sources: Sequence[RegistrationSource], rng: np.random.Generator, perturbations: int,
                     max_translation_mm: float = PAPER_MAX_TRANSLATION_MM,
                     max_rotation_deg: float = PAPER_MAX_ROTATION_DEG, max_sre_mm: float = 20.0,
                     size: Sequence[int] = DEFAULT_PATCH_SIZE,
                     spacing_mm: float = DEFAULT_PATCH_SPACING_MM) -> list[ValidationItem]:
    """Fixed validation starts: per source its own ``start`` (sample cases) and ``perturbations`` starts
    ``T_true ∘ P⁻¹`` with ``P`` uniform in the paper ranges rescaled to an SRE uniform in [1, ``max_sre_mm``]
    mm on the proxy surface of the grid about the source centre (drawn from ``rng``). SRE is then measured
    on the surface of :func:`proxy_gland_mask` of the TRUS."""
    items = []
    for source in sources:
        mask = proxy_gland_mask(source.trus)
        if source.start is not None:
            items.append(ValidationItem(f"{source.name}/start", source, source.start, mask))
        points = proxy_surface_points(patch_grid(source.trus, source.centre_mm, size, spacing_mm))
        for index in range(int(perturbations)):
            params = random_rigid_params(rng, 1, max_translation_mm, max_rotation_deg)[0]
            params = scale_to_sre(params, float(rng.uniform(1.0, max_sre_mm)), points, source.centre_mm)
            start = perturbed_start(source.true_transform, params, source.centre_mm)
            items.append(ValidationItem(f"{source.name}/p{index}", source, start, mask))
    return items
