"""Learned MRI→TRUS registration (torch/MONAI): spatial utilities in physical space and the seed networks.

Conventions (tensor layout, DDF units, rigid parameters) are stated in :mod:`.spatial`; every transform
produced maps a TRUS (fixed) point to an MRI (moving) point in LPS mm, as the classical registration does.
"""

from .attention_reg import AttentionReg, CrossModalAttention, FeatureExtractor
from .spatial import (
    DDF_UNITS,
    DEFAULT_INTEGRATION_STEPS,
    compose_ddf,
    ddf_to_displacement_mm,
    ddf_to_transform,
    displacement_mm_to_ddf,
    euler_to_rigid_params,
    index_to_physical_affine,
    integrate_velocity,
    normalized_to_voxel_ddf,
    physical_grid,
    physical_to_index_affine,
    rigid_params_to_ddf,
    rigid_params_to_euler,
    rigid_params_to_matrix,
    transform_to_ddf,
    voxel_to_normalized_ddf,
    warp,
)

__all__ = [
    "AttentionReg", "CrossModalAttention", "FeatureExtractor",
    "DDF_UNITS", "DEFAULT_INTEGRATION_STEPS", "compose_ddf", "ddf_to_displacement_mm", "ddf_to_transform",
    "displacement_mm_to_ddf", "euler_to_rigid_params", "index_to_physical_affine", "integrate_velocity",
    "normalized_to_voxel_ddf", "physical_grid", "physical_to_index_affine", "rigid_params_to_ddf",
    "rigid_params_to_euler", "rigid_params_to_matrix", "transform_to_ddf", "voxel_to_normalized_ddf", "warp",
]
