"""KL feature-distribution loss of seed 000 (Eq. 10): ``L_KL = Σ_i T_dis(i) log(T_dis(i) / M̂_dis(i))``.

In the paper the merged feature maps of the TRUS (``T_merge``) and of the affinely aligned MRI
(``M̂_merge``) go through a convolutional network followed by a softmax, giving two distributions
``T_dis`` and ``M̂_dis`` in ``R^d``; the loss is the KL divergence of the MRI's from the TRUS's, so that both
extractors learn features with the same (spatial) distribution. That CNN has weights and belongs to the
network (:class:`MRITRUSFusionLib.registration.learned.vit_affine.DistributionHead`, a softmax over the
``d`` voxels of the half-resolution grid); this module takes its log-probabilities.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError


def feature_kl(fixed_log_distribution: torch.Tensor, moving_log_distribution: torch.Tensor) -> torch.Tensor:
    """``KL(T_dis ‖ M̂_dis)`` in nats, summed over the ``d`` entries and averaged over the batch.

    Args:
        fixed_log_distribution: ``(B, d)`` log ``T_dis`` (each row's ``exp`` sums to 1).
        moving_log_distribution: ``(B, d)`` log ``M̂_dis``.

    Returns:
        Scalar, >= 0, 0 when the distributions are equal.
    """
    if fixed_log_distribution.shape != moving_log_distribution.shape or fixed_log_distribution.dim() != 2:
        raise InputError(f"distributions: expected two (B, d) tensors of one shape, got "
                         f"{tuple(fixed_log_distribution.shape)} and {tuple(moving_log_distribution.shape)}")
    return F.kl_div(moving_log_distribution, fixed_log_distribution, reduction="batchmean", log_target=True)


class FeatureKLLoss(nn.Module):
    """Registration term: :func:`feature_kl` of ``outputs["fixed_log_distribution"]`` and
    ``outputs["moving_log_distribution"]`` (``(B, d)`` each); the batch is not used."""

    def forward(self, outputs: Mapping[str, torch.Tensor],
                batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Returns ``"total"`` and ``"feature_kl"``: the same scalar."""
        value = feature_kl(outputs["fixed_log_distribution"], outputs["moving_log_distribution"])
        return {"total": value, "feature_kl": value}
