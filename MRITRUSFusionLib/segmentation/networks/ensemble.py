"""A deep ensemble of segmentation networks of one architecture (members trained with different seeds).

The ensemble's prediction is the mean of the members' class probabilities (Lakshminarayanan et al. 2017). It
returns the logarithm of that mean, so any code that applies ``softmax`` over the class dimension to a
network's output gets the averaged probabilities back (``softmax(log p) = p`` when ``p`` sums to 1).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class MeanProbabilityEnsemble(nn.Module):
    """Members ``(B, C_in, D, H, W) -> (B, K, D, H, W)`` class logits; output: log of their mean softmax.

    Args:
        members: two or more networks with the same input and output channels.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.stack([torch.softmax(member(x).float(), dim=1) for member in self.members]).mean(dim=0)
        return torch.log(mean.clamp_min(torch.finfo(mean.dtype).tiny))
