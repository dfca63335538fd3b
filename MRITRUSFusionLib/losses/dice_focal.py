"""Segmentation loss of seed 000 (Eq. 11–13): class-pooled Dice + softmax focal loss.

``L_seg = L_dice + L_focal`` with

* ``L_dice = 1 - 2 Σ_c Σ_v Y_c G_c / Σ_c Σ_v (Y_c + G_c)`` (Eq. 12): the classes are pooled inside *one*
  ratio, which is MONAI's ``GeneralizedDiceLoss`` with uniform class weights (``w_type="uniform"``), not
  ``DiceLoss``/``DiceFocalLoss`` (a mean of per-class Dice scores);
* ``L_focal = -α Σ_c Σ_v G_c (1 - Y_c)^γ log Y_c`` (Eq. 13; the printed equation drops the one-hot target
  ``G_c``, without which it would not depend on the labels) on softmax probabilities ``Y``: MONAI's
  ``FocalLoss(use_softmax=True)``. ``DiceFocalLoss`` cannot express it either: its focal term is the sigmoid
  (per-channel binary) one. The paper's voxel sum is taken here as a voxel *mean* (summed over classes), so
  the term does not grow with the volume; the constant factor is absorbed by ``α``. ``γ`` and ``α`` are not
  given in the paper (defaults 2 and 1).
"""

from __future__ import annotations

import torch
from monai.losses import FocalLoss, GeneralizedDiceLoss
from torch import nn


class PooledDiceFocalLoss(nn.Module):
    """Eq. 11–13 of seed 000 on logits: ``dice_weight · L_dice + α · L_focal``.

    Args:
        gamma: focusing exponent ``γ`` of the focal term.
        alpha: factor ``α`` of the focal term.
        dice_weight: factor of the Dice term (1 in Eq. 11).
        smooth: added to the Dice numerator and denominator (the paper has none; avoids 0/0).
    """

    def __init__(self, gamma: float = 2.0, alpha: float = 1.0, dice_weight: float = 1.0, smooth: float = 1e-5) -> None:
        super().__init__()
        self.dice = GeneralizedDiceLoss(include_background=True, to_onehot_y=True, softmax=True, w_type="uniform",
                                        smooth_nr=smooth, smooth_dr=smooth)
        self.focal = FocalLoss(include_background=True, to_onehot_y=True, gamma=gamma, use_softmax=True,
                               reduction="none")
        self.alpha = float(alpha)
        self.dice_weight = float(dice_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits: ``(B, K, D, H, W)`` unnormalised class scores (K = 2: background, tumour).
            target: ``(B, 1, D, H, W)`` class indices.

        Returns:
            Scalar loss.
        """
        focal = self.focal(logits, target).sum(dim=1).mean()
        return self.dice_weight * self.dice(logits, target) + self.alpha * focal
