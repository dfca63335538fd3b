"""Synthetic MRI/TRUS pairs of one pelvis with known ground truth (demo, tests, training).

The anatomy is analytic and lives in the MRI's physical space (LPS, mm): a prostate gland (an irregular
ellipsoid) with peripheral and transition zones, a urethra, tumours, point-like landmarks (cysts and
calcifications), the rectum behind the gland and the surrounding soft tissue. The ground-truth transform
``T`` maps a TRUS (fixed) point ``x`` to the MRI (moving) point ``T(x) = A(x + d(x))`` with ``A`` a rigid
followed by an affine transform and ``d`` a smooth displacement field (probe compression). The MRI is the
anatomy sampled on the MRI grid; the TRUS is the same anatomy sampled at ``T(x)`` for every TRUS voxel
``x``, so both images, all labels and the written transform agree exactly.

Appearance: the MRI is T2W-like (bright peripheral zone, dark tumour, bias field, Gaussian noise); the
TRUS has a probe in the rectum, a fan-shaped field of view, depth attenuation, correlated Rayleigh
speckle, bright calcifications casting acoustic shadows, and hypo-echoic tumours (configurable contrast).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

# Tissue classes of the analytic anatomy (values of the class map).
BACKGROUND, SOFT_TISSUE, RECTUM_WALL, RECTUM_LUMEN, PERIPHERAL, TRANSITION, URETHRA, TUMOUR = range(8)
CYST, CALCIFICATION = 8, 9

#: T2W-like MRI intensity of each tissue class (arbitrary units, 0..1).
MRI_INTENSITY = np.array([0.05, 0.35, 0.20, 0.05, 0.75, 0.45, 0.30, 0.18, 0.95, 0.10], dtype=np.float32)
#: TRUS echogenicity of each tissue class before speckle and attenuation (0..1). The tumour entry is
#: replaced by ``PhantomConfig.tumour_trus_echogenicity``.
TRUS_ECHOGENICITY = np.array([0.0, 0.42, 0.70, 0.08, 0.55, 0.45, 0.30, 0.40, 0.08, 1.0], dtype=np.float32)


@dataclass
class PhantomConfig:
    """Geometry, anatomy and misalignment of a phantom case. Lengths in mm, angles in degrees."""

    trus_size: tuple[int, int, int] = (96, 96, 96)
    trus_spacing: tuple[float, float, float] = (0.8, 0.8, 0.8)
    mri_size: tuple[int, int, int] = (80, 80, 56)
    mri_spacing: tuple[float, float, float] = (1.0, 1.0, 1.5)
    #: Rotation (deg about L, P, S) of the MRI grid's axes: an oblique acquisition.
    mri_grid_rotation_deg: tuple[float, float, float] = (8.0, 0.0, 5.0)
    #: Physical position (LPS mm) of the gland centre in MRI space.
    anatomy_centre_mm: tuple[float, float, float] = (12.0, -30.0, 45.0)
    gland_radii_mm: tuple[float, float, float] = (22.0, 17.0, 19.0)
    gland_irregularity: float = 0.08
    #: Relative widening of the gland towards the base (+S) and narrowing towards the apex (-S).
    gland_taper: float = 0.25
    n_tumours: int = 1
    tumour_radius_mm: tuple[float, float] = (4.5, 7.5)
    n_landmarks: int = 4
    landmark_radius_mm: float = 2.5
    #: Echogenicity of tumours on TRUS; the surrounding gland is ~0.5, so 0.30 is visible, 0.45 faint.
    tumour_trus_echogenicity: float = 0.30
    max_rotation_deg: float = 10.0
    max_translation_mm: float = 8.0
    max_affine_scale: float = 0.06
    max_affine_shear: float = 0.04
    #: Largest displacement (mm) of the smooth deformation and its length scale (Gaussian sigma, mm).
    deformation_mm: float = 4.0
    deformation_sigma_mm: float = 18.0
    mri_noise: float = 0.03
    seed: int = 0


@dataclass
class PhantomCase:
    """One synthetic pair with its ground truth. Label lists hold binary uint8 masks: index 0 the gland,
    1.. corresponding landmarks (the μ-RegPro channel convention)."""

    trus: sitk.Image
    mri: sitk.Image
    trus_labels: list[sitk.Image]
    mri_labels: list[sitk.Image]
    #: Lesion ids 0 (none), 1..n_tumours, uint8.
    trus_tumours: sitk.Image
    mri_tumours: sitk.Image
    #: 0 background, 1 peripheral zone, 2 transition zone (urethra counted in the TZ), uint8.
    trus_zones: sitk.Image
    mri_zones: sitk.Image
    #: Maps a TRUS physical point to the MRI physical point (composite: affine after displacement).
    transform: sitk.Transform
    config: PhantomConfig = field(repr=False, default_factory=PhantomConfig)


def _rotation_matrix(degrees: tuple[float, float, float]) -> np.ndarray:
    """Rotation matrix of successive rotations about the L, P and S axes (degrees)."""
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_grid(size, spacing, direction: np.ndarray, centre_mm) -> sitk.Image:
    """An empty float32 image of ``size`` voxels whose physical centre is ``centre_mm`` (LPS mm)."""
    image = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in np.asarray(direction).ravel()])
    half_extent = direction @ ((np.asarray(size) - 1) * np.asarray(spacing) / 2.0)
    image.SetOrigin([float(v) for v in np.asarray(centre_mm) - half_extent])
    return image


def voxel_centres_mm(image: sitk.Image) -> np.ndarray:
    """Physical LPS positions (mm) of all voxels, shape (z, y, x, 3) in NumPy (sitk array) order."""
    size = image.GetSize()
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in size[::-1]], indexing="ij")[::-1], -1)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix = direction * np.array(image.GetSpacing())[None, :]
    return idx @ matrix.T + np.array(image.GetOrigin())


class _Anatomy:
    """The analytic pelvis in MRI physical space; :meth:`classes` labels arbitrary points."""

    def __init__(self, config: PhantomConfig, rng: np.random.Generator):
        self.centre = np.asarray(config.anatomy_centre_mm, dtype=float)
        self.radii = np.asarray(config.gland_radii_mm, dtype=float)
        self.shape_coefficients = rng.normal(0.0, config.gland_irregularity, size=9)
        self.taper = config.gland_taper
        # Rectum: a tube along S, posterior (+P) of the gland.
        self.rectum_axis = self.centre + np.array([0.0, self.radii[1] + 11.0, 0.0])
        self.tumours = [self._random_inside_point(rng, config, peripheral=True) for _ in range(config.n_tumours)]
        self.tumour_radii = rng.uniform(*config.tumour_radius_mm, size=(config.n_tumours, 3))
        self.landmarks = [self._random_inside_point(rng, config, peripheral=False)
                          for _ in range(config.n_landmarks)]
        self.landmark_radius = config.landmark_radius_mm
        self.landmark_kinds = [CYST if k % 2 == 0 else CALCIFICATION for k in range(config.n_landmarks)]

    def _random_inside_point(self, rng, config: PhantomConfig, peripheral: bool) -> np.ndarray:
        """A point well inside the gland; peripheral points lie in the posterior/lateral PZ."""
        while True:
            u = rng.uniform(-1, 1, size=3)
            radius = np.linalg.norm(u)
            if 0.45 < radius < 0.7 and (not peripheral or u[1] > 0.1):
                return self.centre + u * self.radii

    def gland_level(self, points: np.ndarray) -> np.ndarray:
        """Implicit gland function (< 1 inside) at ``points`` (..., 3) in MRI LPS mm."""
        q = (points - self.centre) / self.radii
        # Chestnut shape: wide base (superior, +S), narrow apex.
        q[..., :2] /= (1.0 + self.taper * np.clip(q[..., 2], -1.0, 1.0))[..., None]
        norm = np.linalg.norm(q, axis=-1)
        u = q / np.maximum(norm, 1e-6)[..., None]
        c = self.shape_coefficients
        wobble = (c[0] * u[..., 0] + c[1] * u[..., 1] + c[2] * u[..., 2] + c[3] * u[..., 0] * u[..., 1]
                  + c[4] * u[..., 1] * u[..., 2] + c[5] * u[..., 0] * u[..., 2]
                  + c[6] * (u[..., 0] ** 2 - u[..., 1] ** 2) + c[7] * (3 * u[..., 2] ** 2 - 1) / 2)
        # Flatten the posterior face, where the gland rests against the rectum.
        flatten = 0.12 * np.clip(u[..., 1], 0, None) ** 2
        return norm * (1.0 + wobble + flatten)

    def classes(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tissue class, lesion id (0 none) and landmark id (0 none) at ``points`` (..., 3) MRI LPS mm."""
        rel = points - self.centre
        tissue = np.full(points.shape[:-1], BACKGROUND, dtype=np.uint8)
        body = ((rel[..., 0] / 110.0) ** 2 + (rel[..., 1] / 80.0) ** 2) < 1.0
        tissue[body] = SOFT_TISSUE
        across = points[..., :2] - self.rectum_axis[:2]
        rectum_r = np.hypot(across[..., 0], across[..., 1])
        tissue[rectum_r < 12.0] = RECTUM_WALL
        tissue[rectum_r < 8.0] = RECTUM_LUMEN
        level = self.gland_level(points)
        gland = level < 1.0
        tissue[gland] = PERIPHERAL
        tz = ((rel[..., 0] / (0.62 * self.radii[0])) ** 2 + ((rel[..., 1] + 0.25 * self.radii[1])
                                                              / (0.55 * self.radii[1])) ** 2
              + (rel[..., 2] / (0.7 * self.radii[2])) ** 2) < 1.0
        tissue[gland & tz] = TRANSITION
        urethra = np.hypot(rel[..., 0], rel[..., 1] + 0.2 * self.radii[1]) < 2.5
        tissue[gland & urethra] = URETHRA
        # Tumours and landmarks lie inside the gland: test only gland points (most of the cost otherwise).
        inside_points = points[gland]
        lesion_ids = np.zeros(len(inside_points), dtype=np.uint8)
        for k, (centre, radii) in enumerate(zip(self.tumours, self.tumour_radii), start=1):
            lesion_ids[np.sum(((inside_points - centre) / radii) ** 2, axis=-1) < 1.0] = k
        landmark_ids = np.zeros(len(inside_points), dtype=np.uint8)
        for k, centre in enumerate(self.landmarks, start=1):
            landmark_ids[np.sum((inside_points - centre) ** 2, axis=-1) < self.landmark_radius ** 2] = k
        inside_tissue = tissue[gland]
        inside_tissue[lesion_ids > 0] = TUMOUR
        for k, kind in enumerate(self.landmark_kinds, start=1):
            inside_tissue[landmark_ids == k] = kind
        tissue[gland] = inside_tissue
        lesions = np.zeros(points.shape[:-1], dtype=np.uint8)
        lesions[gland] = lesion_ids
        landmarks = np.zeros(points.shape[:-1], dtype=np.uint8)
        landmarks[gland] = landmark_ids
        return tissue, lesions, landmarks


def _random_affine(config: PhantomConfig, rng: np.random.Generator) -> np.ndarray:
    """3×3 matrix of a random rotation followed by a random scale/shear (the linear part of ``A``)."""
    rotation = _rotation_matrix(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg, size=3))
    scale = np.diag(1.0 + rng.uniform(-config.max_affine_scale, config.max_affine_scale, size=3))
    shear = np.eye(3)
    shear[np.triu_indices(3, 1)] = rng.uniform(-config.max_affine_shear, config.max_affine_shear, size=3)
    return rotation @ scale @ shear


class _Deformation:
    """Smooth displacement ``d(x)`` (mm) in TRUS space, as tissue pushed by external forces: Gaussian bumps
    centred outside the gland, dominated by an anterior push from the probe behind it. Its largest
    magnitude is about ``config.deformation_mm``."""

    def __init__(self, config: PhantomConfig, centre: np.ndarray, rng: np.random.Generator):
        self.sigma = config.deformation_sigma_mm
        directions = rng.normal(0.0, 1.0, size=(4, 3))
        directions[0] = [0.0, 1.0, 0.0]  # behind the gland, at the probe
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        self.centres = centre + directions * rng.uniform(25.0, 32.0, size=(4, 1))
        vectors = rng.normal(0.0, 0.5, size=(4, 3))
        vectors[0] = [0.0, -2.0, 0.0]  # the probe pushes the gland anteriorly (-P)
        vectors /= np.abs(vectors).sum() / 1.5
        self.vectors = vectors * config.deformation_mm

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Displacement (mm, float64) at ``points`` (..., 3) in TRUS LPS mm."""
        displacement = np.zeros(points.shape, dtype=np.float64)
        for centre, vector in zip(self.centres, self.vectors):
            squared = np.sum((points - centre.astype(points.dtype)) ** 2, axis=-1)
            displacement += np.exp(squared / np.float32(-2 * self.sigma ** 2))[..., None] * vector
        return displacement


def _image_like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def _mri_appearance(tissue: np.ndarray, grid: sitk.Image, config: PhantomConfig,
                    rng: np.random.Generator) -> np.ndarray:
    """T2W-like intensities: class means, partial-volume blur, a smooth bias field and noise."""
    image = MRI_INTENSITY[tissue]
    sigma_vox = 0.6 / np.array(grid.GetSpacing())[::-1]
    image = ndimage.gaussian_filter(image, sigma_vox)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in image.shape], indexing="ij")
    a = rng.uniform(-0.1, 0.1, size=3)
    bias = 1.0 + a[0] * xx + a[1] * yy + a[2] * zz
    image = image * bias + rng.normal(0.0, config.mri_noise, size=image.shape)
    return np.clip(image, 0.0, None).astype(np.float32)


def _trus_appearance(tissue: np.ndarray, points_mri: np.ndarray, anatomy: _Anatomy, grid: sitk.Image,
                     config: PhantomConfig, rng: np.random.Generator) -> np.ndarray:
    """TRUS-like intensities: echogenicity, fan-shaped field of view from the probe, depth attenuation,
    shadows behind calcifications and correlated Rayleigh speckle. ``points_mri`` are the MRI-space
    positions of the TRUS voxels, so the probe sits in the rectum whatever the transform."""
    echo = TRUS_ECHOGENICITY.copy()
    echo[TUMOUR] = config.tumour_trus_echogenicity
    image = echo[tissue]
    # Probe-centred polar coordinates in the plane across the rectum (MRI frame: L and P axes).
    rel = points_mri[..., :2] - anatomy.rectum_axis[:2]
    depth = np.hypot(rel[..., 0], rel[..., 1])
    angle = np.arctan2(rel[..., 0], -rel[..., 1])  # 0 = straight anterior
    image = image * np.exp(-0.012 * depth)
    image[(np.abs(angle) > np.deg2rad(70)) | (depth < 8.0)] = 0.0
    # Acoustic shadow behind each calcification (further from the probe, within its angular extent).
    for centre, kind in zip(anatomy.landmarks, anatomy.landmark_kinds):
        if kind != CALCIFICATION:
            continue
        c_rel = centre[:2] - anatomy.rectum_axis[:2]
        c_depth, c_angle = np.hypot(*c_rel), np.arctan2(c_rel[0], -c_rel[1])
        half_width = np.arctan2(anatomy.landmark_radius, c_depth)
        in_z = np.abs(points_mri[..., 2] - centre[2]) < anatomy.landmark_radius
        shadow = (np.abs(angle - c_angle) < half_width) & (depth > c_depth + anatomy.landmark_radius) & in_z
        image[shadow] *= 0.35
    speckle = rng.rayleigh(scale=np.sqrt(2.0 / np.pi), size=image.shape)  # mean 1
    speckle = ndimage.gaussian_filter(speckle, 0.8 / np.array(grid.GetSpacing())[::-1] * 0.8)
    speckle /= speckle.mean()
    image = ndimage.gaussian_filter(image, 0.5) * speckle
    return np.clip(image, 0.0, None).astype(np.float32)


def _labels_from_ids(ids: np.ndarray, count: int, reference: sitk.Image) -> list[sitk.Image]:
    return [_image_like((ids == k).astype(np.uint8), reference) for k in range(1, count + 1)]


def _zones(tissue: np.ndarray) -> np.ndarray:
    zones = np.zeros(tissue.shape, dtype=np.uint8)
    zones[np.isin(tissue, (PERIPHERAL, TUMOUR, CYST, CALCIFICATION))] = 1
    zones[np.isin(tissue, (TRANSITION, URETHRA))] = 2
    return zones


#: Peak memory (bytes) per voxel of the TRUS and MRI grids while a phantom is generated (~200 measured at 128³).
GENERATION_BYTES_PER_VOXEL = 256


def check_phantom_memory(config: PhantomConfig) -> None:
    """:class:`~MRITRUSFusionLib.errors.InputError` before any allocation when generating ``config`` would
    need more memory than :func:`~MRITRUSFusionLib.io.volumes.max_image_bytes` allows."""
    from .io.volumes import refuse_over_limit

    voxels = float(np.prod(config.trus_size, dtype=float) + np.prod(config.mri_size, dtype=float))
    grids = f"{'×'.join(map(str, config.trus_size))} TRUS + {'×'.join(map(str, config.mri_size))} MRI"
    refuse_over_limit("phantom", grids, voxels * GENERATION_BYTES_PER_VOXEL, "to generate")


def generate_phantom(config: Optional[PhantomConfig] = None, **overrides) -> PhantomCase:
    """A phantom case; ``overrides`` replace fields of ``config`` (e.g. ``seed=3, n_tumours=2``).

    Raises:
        InputError: the grids are too large for the memory limit (checked before anything is allocated).
    """
    config = config or PhantomConfig()
    if overrides:
        config = PhantomConfig(**{**config.__dict__, **overrides})
    check_phantom_memory(config)
    rng = np.random.default_rng(config.seed)
    anatomy = _Anatomy(config, rng)

    mri_direction = _rotation_matrix(config.mri_grid_rotation_deg)
    mri_grid = make_grid(config.mri_size, config.mri_spacing, mri_direction, anatomy.centre)
    matrix = _random_affine(config, rng)
    translation = rng.uniform(-1, 1, size=3)
    translation *= config.max_translation_mm / np.linalg.norm(translation)
    # A(x) = M (x - c) + c + t; choose the TRUS centre c so the gland is central on TRUS.
    trus_centre = anatomy.centre - translation
    affine = sitk.AffineTransform(matrix.ravel().tolist(), translation.tolist(), trus_centre.tolist())
    trus_grid = make_grid(config.trus_size, config.trus_spacing, np.eye(3), trus_centre)
    deformation = _Deformation(config, trus_centre, rng)

    trus_points = voxel_centres_mm(trus_grid)
    displacement = deformation(trus_points)
    warped = (trus_points + displacement - trus_centre) @ matrix.T + trus_centre + translation

    mri_tissue, mri_lesions, mri_marks = anatomy.classes(voxel_centres_mm(mri_grid))
    trus_tissue, trus_lesions, trus_marks = anatomy.classes(warped)

    displacement_image = sitk.GetImageFromArray(displacement, isVector=True)
    displacement_image.CopyInformation(trus_grid)
    field_transform = sitk.DisplacementFieldTransform(sitk.Cast(displacement_image, sitk.sitkVectorFloat64))
    transform = sitk.CompositeTransform(3)
    transform.AddTransform(affine)
    transform.AddTransform(field_transform)  # applied first: T(x) = A(x + d(x))

    gland_ids = lambda tissue: np.isin(tissue, (PERIPHERAL, TRANSITION, URETHRA, TUMOUR, CYST, CALCIFICATION))
    return PhantomCase(
        trus=_image_like(_trus_appearance(trus_tissue, warped, anatomy, trus_grid, config, rng), trus_grid),
        mri=_image_like(_mri_appearance(mri_tissue, mri_grid, config, rng), mri_grid),
        trus_labels=[_image_like(gland_ids(trus_tissue).astype(np.uint8), trus_grid)]
        + _labels_from_ids(trus_marks, config.n_landmarks, trus_grid),
        mri_labels=[_image_like(gland_ids(mri_tissue).astype(np.uint8), mri_grid)]
        + _labels_from_ids(mri_marks, config.n_landmarks, mri_grid),
        trus_tumours=_image_like(trus_lesions, trus_grid),
        mri_tumours=_image_like(mri_lesions, mri_grid),
        trus_zones=_image_like(_zones(trus_tissue), trus_grid),
        mri_zones=_image_like(_zones(mri_tissue), mri_grid),
        transform=transform,
        config=config,
    )


def write_phantom_case(case: PhantomCase, root: str | Path, name: str, overwrite: bool = True) -> dict[str, Path]:
    """Write ``case`` under ``root`` in the DeepReg paired layout, plus tumour and zone labels and the
    ground-truth transform (``transforms/NAME.h5``, TRUS point -> MRI point). Returns the written paths."""
    from .io import write_label, write_label_channels, write_transform, write_volume

    root = Path(root)
    files = {
        "fixed_images": (write_volume, case.trus, ".nii.gz"),
        "moving_images": (write_volume, case.mri, ".nii.gz"),
        "fixed_labels": (write_label_channels, case.trus_labels, ".nii.gz"),
        "moving_labels": (write_label_channels, case.mri_labels, ".nii.gz"),
        "fixed_tumour_labels": (write_label, case.trus_tumours, ".nii.gz"),
        "moving_tumour_labels": (write_label, case.mri_tumours, ".nii.gz"),
        "fixed_zone_labels": (write_label, case.trus_zones, ".nii.gz"),
        "moving_zone_labels": (write_label, case.mri_zones, ".nii.gz"),
        "transforms": (write_transform, case.transform, ".h5"),
    }
    written = {}
    for folder, (writer, data, suffix) in files.items():
        written[folder] = writer(data, root / folder / f"{name}{suffix}", overwrite=overwrite)
    return written
