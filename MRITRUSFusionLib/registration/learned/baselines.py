"""MONAI's ``LocalNet`` (deformable) and ``GlobalNet`` (affine) behind the learned-registration interface.

They are the reference baselines of the learned methods (the DeepReg MR–TRUS networks): same grid, data,
trainer and losses as the seed models, so a table compares architectures, not pipelines. Both take the
MRI and the TRUS stacked as two channels and return ``{"ddf": (B, 3, D, H, W)}`` in voxels of the fixed
grid (pull convention of :mod:`.spatial`); both start as the identity (zero DDF).
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.nets import GlobalNet, LocalNet
from torch import nn


class StackedPairNetwork(nn.Module):
    """Wraps a MONAI registration network mapping ``cat([moving, fixed])`` (B, 2, D, H, W) to a voxel DDF."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"ddf": (B, 3, D, H, W)}`` (voxels, pull) for TRUS ``fixed`` and MRI ``moving`` (B, 1, D, H, W)."""
        return {"ddf": self.network(torch.cat([moving, fixed], dim=1))}


def build_localnet(spatial_size: Sequence[int], num_channel_initial: int = 16,
                   extract_levels: Sequence[int] = (0, 1, 2, 3)) -> StackedPairNetwork:
    """MONAI ``LocalNet`` with a zero-initialised output layer (identity at start).

    Args:
        spatial_size: grid size (D, H, W) in voxels; each divisible by ``2 ** max(extract_levels)``.
        num_channel_initial: feature channels of the first level (doubled at each level).
        extract_levels: levels whose features are summed into the DDF (DeepReg's default 0..3).
    """
    _check_divisible(spatial_size, 2 ** max(extract_levels))
    network = LocalNet(spatial_dims=3, in_channels=2, num_channel_initial=int(num_channel_initial),
                       extract_levels=tuple(int(level) for level in extract_levels), out_channels=3,
                       out_kernel_initializer="zeros", out_activation=None)
    return StackedPairNetwork(network)


def build_globalnet(spatial_size: Sequence[int], num_channel_initial: int = 8, depth: int = 4) -> StackedPairNetwork:
    """MONAI ``GlobalNet``: an encoder regressing the 12 affine parameters (identity at start), as a DDF.

    Args:
        spatial_size: grid size (D, H, W) in voxels; each divisible by ``2 ** depth``.
        num_channel_initial: feature channels of the first level (doubled at each level).
        depth: downsampling levels of the encoder.
    """
    _check_divisible(spatial_size, 2 ** depth)
    network = GlobalNet(image_size=[int(s) for s in spatial_size], spatial_dims=3, in_channels=2,
                        num_channel_initial=int(num_channel_initial), depth=int(depth))
    return StackedPairNetwork(network)


def _check_divisible(spatial_size: Sequence[int], factor: int) -> None:
    if len(spatial_size) != 3 or any(int(s) % factor for s in spatial_size):
        raise ValueError(f"spatial_size {list(spatial_size)} must be 3 sizes divisible by {factor}")
