"""Reading, validating and writing 3D scalar volumes (NIfTI, NRRD, MetaImage, DICOM series) in LPS mm.

Every image keeps its physical geometry as SimpleITK holds it: origin (mm, LPS), spacing (mm per voxel) and
direction (3×3 cosines, voxel axes -> LPS). NIfTI's RAS storage is converted by SimpleITK on read and write.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .atomic import atomic_output, full_suffix

#: Suffixes :func:`write_volume` writes; reading accepts anything SimpleITK reads, and DICOM folders.
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def error_reason(error: Exception) -> str:
    """The one-line cause of ``error``; for a multi-line SimpleITK/ITK exception, the line after ``ERROR:``."""
    text = str(error).strip()
    match = re.search(r"ERROR: (?:\w+\(0x[0-9a-fA-F]+\): )?(.+)", text)
    if not match:
        return text.splitlines()[-1]
    reason = match.group(1).strip()
    if reason.endswith(":"):  # the cause follows on the last line (e.g. NRRD's header checks)
        reason = f"{reason} {text.splitlines()[-1].strip()}"
    return reason


def _read_dicom_series(folder: Path, subject: str) -> sitk.Image:
    """Read the first DICOM series found in ``folder`` (geometry from ImagePositionPatient/Orientation)."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"{subject}: folder holds no DICOM series")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    return reader.Execute()


def _check_nifti_finite(path: Path, subject: str) -> None:
    """ITK's NIfTI reader (niftilib) silently turns NaN/Inf voxels into 0, so look at float NIfTI data first."""
    nifti = nib.load(str(path))
    if nifti.get_data_dtype().kind == "f" and not np.isfinite(np.asanyarray(nifti.dataobj)).all():
        raise InputError(f"{subject}: contains NaN or Inf voxels")


#: Largest image (GiB, as float32) read without complaint; ``MRITRUS_FUSION_MAX_IMAGE_GIB`` overrides it.
DEFAULT_MAX_IMAGE_GIB = 8.0


def max_image_bytes() -> float:
    """The size limit (bytes, as float32 voxels) of images read, from the environment or the default."""
    return float(os.environ.get("MRITRUS_FUSION_MAX_IMAGE_GIB", DEFAULT_MAX_IMAGE_GIB)) * 2 ** 30


def refuse_over_limit(subject: str, voxels: str, needed_bytes: float, purpose: str) -> None:
    """Raise :class:`InputError` when ``needed_bytes`` exceed :func:`max_image_bytes`; call it before allocating.

    The message reads ``SUBJECT: VOXELS voxels need X GiB PURPOSE, more than the Y GiB limit (...)``.
    """
    if needed_bytes > max_image_bytes():
        raise InputError(f"{subject}: {voxels} voxels need {needed_bytes / 2 ** 30:.1f} GiB {purpose}, more than "
                         f"the {max_image_bytes() / 2 ** 30:.1f} GiB limit (MRITRUS_FUSION_MAX_IMAGE_GIB)")


def _check_size_before_reading(path: Path, subject: str) -> None:
    """Refuse, from the header alone, an image too large to hold in memory as float32."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    voxels = float(np.prod([float(n) for n in reader.GetSize()])) * reader.GetNumberOfComponents()
    refuse_over_limit(subject, "×".join(str(n) for n in reader.GetSize()), voxels * 4, "as float32")


def read_image(path: str | os.PathLike, *, name: str = "image") -> sitk.Image:
    """Read any image SimpleITK reads (any dimension, pixel type as stored), or a DICOM series folder.

    Raises:
        InputError: ``path`` does not exist or cannot be read, its header promises more voxels than
            :func:`max_image_bytes` allows, or a floating-point NIfTI file holds NaN/Inf voxels (which
            SimpleITK would read as 0); the message names ``name`` and ``path``.
    """
    path = Path(path)
    subject = f"{name} {path}"
    if not path.exists():
        raise InputError(f"{subject}: no such file")
    try:
        if path.is_dir():
            return _read_dicom_series(path, subject)
        _check_size_before_reading(path, subject)
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"{subject}: cannot read as an image: {error_reason(error)}") from None
    if full_suffix(path) in (".nii", ".nii.gz"):
        _check_nifti_finite(path, subject)
    return image


def _size_text(image: sitk.Image) -> str:
    return "×".join(str(n) for n in image.GetSize())


def check_finite(image: sitk.Image, name: str) -> sitk.Image:
    """Raise :class:`InputError` if a floating-point ``image`` holds NaN or Inf voxels."""
    voxels = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(voxels.dtype, np.floating) and not np.isfinite(voxels).all():
        raise InputError(f"{name}: contains NaN or Inf voxels")
    return image


def check_volume(image: sitk.Image, name: str) -> sitk.Image:
    """Check that ``image`` is a 3D scalar volume with finite voxels; return it unchanged.

    Spacing (mm) is always positive: SimpleITK refuses zero or negative spacing already when a file is
    read or an image is built, which :func:`read_image` reports as an :class:`InputError`.

    Args:
        image: the volume.
        name: how the user knows it (e.g. ``"fixed image /data/trus.nii.gz"``); starts every message.

    Raises:
        InputError: not 3D, more than one component per voxel, or NaN/Inf voxels.
    """
    if image.GetDimension() != 3:
        raise InputError(f"{name}: expected a 3D volume, got {image.GetDimension()}D ({_size_text(image)})")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name}: expected a scalar volume, got {image.GetNumberOfComponentsPerPixel()} "
                         f"components per voxel ({_size_text(image)})")
    return check_finite(image, name)


def read_volume(path: str | os.PathLike, *, pixel_type: int = sitk.sitkFloat32, name: str = "image") -> sitk.Image:
    """Read a 3D scalar volume and cast it to ``pixel_type``, keeping origin, spacing and direction (LPS mm).

    Args:
        path: a NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``)
            file, or a folder holding a DICOM series (the first series found is read).
        pixel_type: SimpleITK pixel type of the result.
        name: role of the volume in messages, e.g. ``"fixed image"``.

    Raises:
        InputError: missing or unreadable file, not a 3D scalar volume, or NaN/Inf voxels.
    """
    image = check_volume(read_image(path, name=name), f"{name} {path}")
    return sitk.Cast(image, pixel_type)


def _write_metaimage_pair(image: sitk.Image, tmp: Path, target: Path, compress: bool) -> None:
    """Write ``.mhd`` + data file: the data file is named after ``target`` (the header refers to it by name).

    Both are written in a hidden scratch folder ``.NAME.XXXXXXXX`` (what a killed write leaves), then the data
    file and the header are renamed into place, in that order: only between those two renames does the
    previous header see the new data.
    """
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as scratch:
        header = Path(scratch) / target.name
        sitk.WriteImage(image, str(header), compress)
        for data in Path(scratch).iterdir():
            if data != header:
                os.replace(data, target.parent / data.name)
        os.replace(header, tmp)


def write_volume(image: sitk.Image, path: str | os.PathLike, *, overwrite: bool = True,
                 compress: bool = True) -> Path:
    """Write ``image`` with its geometry, in the format named by the suffix of ``path``; return ``path``.

    Args:
        image: the image (usually 3D; NIfTI, NRRD and MetaImage also take 4D and vector images).
        path: ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha`` or ``.mhd`` (written with a sibling data file).
        overwrite: replace an existing file; if False, an existing ``path`` raises OutputExistsError.
        compress: compress voxel data where the format allows (``.nrrd``, ``.mha``, ``.mhd``).

    Raises:
        InputError: ``path`` is a folder or has another suffix.
    """
    path = Path(path)
    suffix = full_suffix(path)
    if path.is_dir() or suffix not in VOLUME_SUFFIXES:
        raise InputError(f"{path}: cannot write a volume here; use one of {', '.join(VOLUME_SUFFIXES)}")
    with atomic_output(path, overwrite) as tmp:
        if suffix == ".mhd":
            _write_metaimage_pair(image, tmp, path, compress)
        else:
            sitk.WriteImage(image, str(tmp), compress)
    return path
