"""Channels-last memory layout for 3D networks: the layout oneDNN (MKL-DNN) runs 3D convolutions fast in.

With the default channels-first layout, the CPU backward pass of a 3D convolution with few channels is
10-20x slower than with ``torch.channels_last_3d`` (measured: 8→8 channels, 3³ kernel, 48³ batch of 2:
3.3 s vs 0.16 s on 2 cores). Values are identical up to float rounding; only strides change.
"""

from __future__ import annotations

from typing import Mapping

import torch


def has_3d_weights(module: torch.nn.Module) -> bool:
    """Whether ``module`` holds 5D (3D convolution) weights and no 4D (2D convolution) ones."""
    ranks = {parameter.dim() for parameter in module.parameters()}
    return 5 in ranks and 4 not in ranks


def channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with its 3D convolution weights in ``channels_last_3d`` (unchanged for other networks)."""
    return module.to(memory_format=torch.channels_last_3d) if has_3d_weights(module) else module


def as_channels_last(tensor: torch.Tensor) -> torch.Tensor:
    """A 5D tensor in ``channels_last_3d`` layout; other tensors unchanged."""
    return tensor.contiguous(memory_format=torch.channels_last_3d) if tensor.dim() == 5 else tensor


def batch_to(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of ``batch`` on ``device``, 5D ones channels-last."""
    return {key: as_channels_last(value.to(device)) for key, value in batch.items()}
