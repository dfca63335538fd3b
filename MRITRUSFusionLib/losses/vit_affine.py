"""Registration losses of seed 000's ViT affine branch: weighted Dice (Eq. 9) + feature KL (Eq. 10).

The paper's total (Eq. 14) is ``α L_seg + β L_KL + λ L_reg`` (printed with ``L_seg`` twice; the third term is
the registration loss) and gives no values for the factors. This module is the registration part,
``dice_weight · L_reg + kl_weight · L_KL``, with equal weights by default; the segmentation term is added by
the training task (see :mod:`.dice_focal`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from .feature_kl import FeatureKLLoss
from .weighted_dice import WeightedDiceLoss


class ViTAffineLoss(nn.Module):
    """``dice_weight · WeightedDice(warped moving labels, fixed labels) + kl_weight · KL(T_dis ‖ M̂_dis)``.

    The moving labels (and tumour, when the batch has one) are warped by ``outputs["ddf"]`` (see
    :class:`.weighted_dice.WeightedDiceLoss`).

    Args:
        dice_weight: factor of the weighted Dice term (``λ`` of Eq. 14).
        kl_weight: factor of the KL term (``β`` of Eq. 14).
        class_weights: ``(other, prostate, tumour)`` weights of :class:`.weighted_dice.WeightedDiceLoss`.
        landmark_weight: weight of each landmark channel.
        epsilon: smoothing ``ε`` of the Dice ratio.
    """

    def __init__(self, dice_weight: float = 1.0, kl_weight: float = 1.0,
                 class_weights: Sequence[float] = (1.0, 1.0, 2.0), landmark_weight: float = 2.0,
                 epsilon: float = 1e-5) -> None:
        super().__init__()
        self.dice_weight = float(dice_weight)
        self.kl_weight = float(kl_weight)
        self.dice = WeightedDiceLoss(class_weights, landmark_weight, epsilon)
        self.kl = FeatureKLLoss()

    def forward(self, outputs: Mapping[str, torch.Tensor],
                batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """
        Args:
            outputs: the network's dict: ``"ddf"`` ``(B, 3, D, H, W)`` voxels, and ``"fixed_log_distribution"``,
                ``"moving_log_distribution"`` ``(B, d)``.
            batch: ``"fixed_label"``, ``"moving_label"`` ``(B, L, D, H, W)``; optional ``"fixed_tumour"`` and
                ``"moving_tumour"`` ``(B, 1, D, H, W)``.

        Returns:
            ``"total"`` (weighted sum) and the unweighted ``"weighted_dice"`` and ``"feature_kl"``, all scalars.
        """
        dice = self.dice(outputs, batch)["total"]
        kl = self.kl(outputs, batch)["total"]
        return {"total": self.dice_weight * dice + self.kl_weight * kl, "weighted_dice": dice, "feature_kl": kl}
