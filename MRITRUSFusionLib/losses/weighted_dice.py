"""Weighted multi-class Dice registration loss of seed 000 (Eq. 9), with this project's landmark channels.

Paper: ``L_reg = 1 - (Σ_c w_c · 2 Σ_i Ĝ_M^c G_T^c + ε) / (Σ_c w_c (Σ_i (Ĝ_M^c)² + Σ_i (G_T^c)²) + ε)``
over the classes "other", "prostate" and "tumour", with the tumour weighted higher. The classes are *pooled* inside one
ratio (not a mean of per-class Dice scores). No weight values are given; the defaults here are (1, 1, 2).

How the classes are built from this project's labels (gland mask ``g``, tumour mask ``t``, both in [0, 1];
soft after warping): ``tumour = t``, ``prostate = g (1 - t)``, ``other = (1 - g)(1 - t)``. For binary masks
this is the one-hot labelling of the paper; for soft (warped) masks the three still sum to 1 at every voxel.

Choices beyond the paper:

* landmark channels ``1..`` of the label tensors are extra classes with weight ``landmark_weight``, added to
  the same pooled ratio (they overlap the three tissue classes, which is harmless in a sum of overlaps);
* a channel empty in the *fixed* label is padding: its class gets weight 0 for that batch item (for the gland
  channel, both "other" and "prostate", which are defined through it);
* without tumour labels, or for an item whose fixed tumour is empty, ``t = 0`` on both sides and the tumour
  class has weight 0 (the paper's three classes reduce to other/prostate, "gland-only");
* the loss is averaged over the batch items that have at least one class left.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from ..errors import InputError
from ..registration.learned.spatial import warp


def _present(mask: torch.Tensor) -> torch.Tensor:
    """``(B, C, ...)`` masks → ``(B, C)`` float, 1 where the channel has any non-zero voxel."""
    return (mask.flatten(2).amax(dim=2) > 0).to(mask.dtype)


def tissue_classes(gland: torch.Tensor, tumour: torch.Tensor) -> torch.Tensor:
    """The paper's classes other / prostate / tumour from ``(B, 1, D, H, W)`` masks in [0, 1].

    Returns:
        ``(B, 3, D, H, W)``: ``(1 - g)(1 - t)``, ``g (1 - t)``, ``t``.
    """
    return torch.cat([(1 - gland) * (1 - tumour), gland * (1 - tumour), tumour], dim=1)


def _class_weights(fixed_label: torch.Tensor, tumour_used: torch.Tensor, class_weights: Sequence[float],
                   landmark_weight: float) -> torch.Tensor:
    """``(B, 3 + L - 1)`` per-item class weights, 0 for padding channels and unused tumours."""
    present = _present(fixed_label)
    tissue = torch.tensor(class_weights).to(present) * torch.cat([present[:, :1], present[:, :1], tumour_used], 1)
    return torch.cat([tissue, landmark_weight * present[:, 1:]], dim=1)


def weighted_dice_loss(moving_label: torch.Tensor, fixed_label: torch.Tensor,
                       moving_tumour: Optional[torch.Tensor] = None, fixed_tumour: Optional[torch.Tensor] = None,
                       class_weights: Sequence[float] = (1.0, 1.0, 2.0), landmark_weight: float = 2.0,
                       epsilon: float = 1e-5) -> torch.Tensor:
    """Eq. 9 between moving labels already on the fixed grid (``Ĝ_M``) and fixed labels (``G_T``).

    Args:
        moving_label: ``(B, L, D, H, W)`` warped moving labels in [0, 1]; channel 0 gland, ``1..`` landmarks.
        fixed_label: ``(B, L, D, H, W)`` fixed labels in {0, 1}, same layout.
        moving_tumour: ``(B, 1, D, H, W)`` warped moving tumour, or ``None``.
        fixed_tumour: ``(B, 1, D, H, W)`` fixed tumour, or ``None`` (gland-only loss).
        class_weights: ``(w_other, w_prostate, w_tumour)``.
        landmark_weight: weight of each landmark channel (a small-structure class, like the tumour).
        epsilon: ``ε`` added to the numerator and the denominator.

    Returns:
        Scalar loss in [0, 1], averaged over the items that have at least one class.
    """
    if moving_label.shape != fixed_label.shape or moving_label.dim() != 5:
        raise InputError(f"labels: expected two (B, L, D, H, W) tensors of one shape, got "
                         f"{tuple(moving_label.shape)} and {tuple(fixed_label.shape)}")
    if (moving_tumour is None) != (fixed_tumour is None):
        raise InputError("tumour labels: give both the moving and the fixed tumour, or neither")
    if fixed_tumour is None:
        moving_tumour = fixed_tumour = torch.zeros_like(fixed_label[:, :1])
    tumour_used = _present(fixed_tumour)
    mask = tumour_used[:, :, None, None, None]
    moving = torch.cat([tissue_classes(moving_label[:, :1], moving_tumour * mask), moving_label[:, 1:]], dim=1)
    fixed = torch.cat([tissue_classes(fixed_label[:, :1], fixed_tumour * mask), fixed_label[:, 1:]], dim=1)
    weights = _class_weights(fixed_label, tumour_used, class_weights, landmark_weight)
    overlap = (weights * (moving * fixed).flatten(2).sum(dim=2)).sum(dim=1)
    volume = (weights * (moving.square() + fixed.square()).flatten(2).sum(dim=2)).sum(dim=1)
    loss = 1 - (2 * overlap + epsilon) / (volume + epsilon)
    valid = (weights > 0).any(dim=1).to(loss)
    return (loss * valid).sum() / valid.sum().clamp(min=1)


class WeightedDiceLoss(nn.Module):
    """Registration term: :func:`weighted_dice_loss` of the moving labels warped by ``outputs["ddf"]``.

    Labels (and the tumour, when the batch has one) are warped with trilinear interpolation (soft,
    differentiable in the transform), zero outside the moving volume.

    Args:
        class_weights: ``(w_other, w_prostate, w_tumour)``.
        landmark_weight: weight of each landmark channel.
        epsilon: ``ε`` of the Dice ratio.
    """

    def __init__(self, class_weights: Sequence[float] = (1.0, 1.0, 2.0), landmark_weight: float = 2.0,
                 epsilon: float = 1e-5) -> None:
        super().__init__()
        if len(class_weights) != 3 or min(class_weights) < 0 or landmark_weight < 0:
            raise ValueError(f"class_weights needs 3 non-negative values and landmark_weight >= 0, got "
                             f"{class_weights} and {landmark_weight}")
        self.class_weights = tuple(float(w) for w in class_weights)
        self.landmark_weight = float(landmark_weight)
        self.epsilon = float(epsilon)

    def forward(self, outputs: Mapping[str, torch.Tensor],
                batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """
        Args:
            outputs: the network's dict with ``"ddf"`` ``(B, 3, D, H, W)`` (voxels, pull, fixed grid).
            batch: ``"fixed_label"``, ``"moving_label"`` ``(B, L, D, H, W)``; optional ``"fixed_tumour"`` and
                ``"moving_tumour"`` ``(B, 1, D, H, W)``.

        Returns:
            ``"total"`` and ``"weighted_dice"``: the same scalar.
        """
        ddf = outputs["ddf"]
        moving_tumour, fixed_tumour = batch.get("moving_tumour"), batch.get("fixed_tumour")
        value = weighted_dice_loss(warp(batch["moving_label"].to(ddf), ddf), batch["fixed_label"].to(ddf),
                                   None if moving_tumour is None else warp(moving_tumour.to(ddf), ddf),
                                   None if fixed_tumour is None else fixed_tumour.to(ddf),
                                   self.class_weights, self.landmark_weight, self.epsilon)
        return {"total": value, "weighted_dice": value}
