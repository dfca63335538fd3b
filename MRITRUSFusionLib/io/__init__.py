"""Reading and writing images, label maps, segmentations, transforms, point lists and dataset layouts.

All geometry is physical (LPS, mm) as SimpleITK holds it; every writer is atomic and takes ``overwrite``.
"""

from .atomic import atomic_output, full_suffix, write_json
from .datasets import Case, deepreg_paired_cases, manifest_cases, muregpro_cases, open_dataset
from .labels import read_label, read_label_channels, write_label, write_label_channels
from .points import read_points, write_points
from .segmentations import Segment, default_segments, read_seg_nrrd, write_seg_nrrd
from .transforms import as_affine, is_linear, read_transform, require_kind, write_transform
from .volumes import check_volume, read_volume, write_volume

__all__ = [
    "Case", "Segment", "as_affine", "atomic_output", "check_volume", "deepreg_paired_cases", "default_segments",
    "full_suffix", "is_linear", "manifest_cases", "muregpro_cases", "open_dataset", "read_label",
    "read_label_channels", "read_points", "read_seg_nrrd", "read_transform", "read_volume", "require_kind",
    "write_json", "write_label", "write_label_channels", "write_points", "write_seg_nrrd", "write_transform",
    "write_volume",
]
