"""The training loss of E-CMCA + LSTM (seed 001, §3.4 and §3.3.5): Dice + MI + gradient, weighted by the task mask.

``L = α·L_grad + β·L_Dice + γ·L_MI`` (paper: ``α = 0.4``, ``β = 1``, ``γ = 1``), with the task mask ``M`` of
the network dividing each pseudo-temporal slice's weight between registration (``L_Dice``, ``L_MI``; task 1)
and smoothing (``L_grad``; task 2): ``L = M_reg · L_reg + M_smooth · L_smooth``, ``M_reg + M_smooth = 1``.

Terms (all on the fixed grid; the moving image and labels are warped by ``outputs["ddf"]``, voxels, pull):

* ``dice``: ``1 - 2|y_pred ∩ y_true| / (|y_pred| + |y_true|)`` (MONAI ``DiceLoss``) between each warped
  moving label channel and the fixed one, gland (channel 0) and landmarks (1..), averaged over the valid
  (batch item, channel) pairs; a channel empty in the fixed label is padding and is left out. With
  ``label_sigmas`` other than ``(0,)`` the Dice is averaged over copies of both labels smoothed by a Gaussian
  of each sigma (grid voxels; 0 = unsmoothed): the multi-scale label Dice of Hu et al. 2018 (weakly-supervised
  MR–TRUS registration, the authors of the mrus-example data). It is a departure from the paper, whose Dice
  reads the labels as they are: a landmark of a few voxels that does not overlap its partner gives the plain
  Dice no gradient, while its smoothed copies still overlap.
* ``mi``: MONAI ``GlobalMutualInformationLoss`` (Mattes b-spline Parzen windows, so z-scored intensities
  need no rescaling; the value is ``-MI`` in nats) between the warped MRI and the TRUS over the voxels of
  the fixed gland ("MI_prostate"), per batch item; items whose fixed gland is empty are left out.
* ``gradient``: ``(1/|Ω|) Σ_p ||∇φ(p)||²`` (squared Frobenius norm of the Jacobian, central differences,
  MONAI ``DiffusionLoss`` before reduction, on the interior voxels), ``φ`` = ``outputs[field_key]``:
  by default the stationary velocity, the decoder's flow field that the paper penalises.

Task-mask weighting. ``outputs["task_mask"]`` (``(B, 1, D, H, W)``, registration weight per voxel, constant
over each pseudo-temporal slab) weights the smoothing term voxel by voxel (``1 - task_mask``) and each item's
registration terms by its mean ``m_n``. Both are multiplied by 2 so that the even mask 0.5 — and a missing
``"task_mask"``, which is treated as 0.5 — gives exactly the paper's unmasked loss:

``total = β·2·Σ_(n,l) m_n dice_(n,l) / N_valid + γ·2·mean_n(m_n mi_n)
+ α·2·mean_p((1 - task_mask)·||∇φ||²)``.

Gradient into the mask. The paper trains the subnet with this loss, but the loss is linear in the mask, so
the subnet alone drives each slice to whichever task is currently cheaper: with the literal reading
(``detach_task_mask=False``) a 32³ toy pair had its registration weight at 0.0 after 25 Adam steps
(lr 1e-3) and the Dice loss stopped improving (0.29 → 0.29), while with the gradient stopped it fell to 0.06.
The default therefore stops the gradient (``detach_task_mask=True``): the mask still weights the terms, but
stays near its initial ≈ 0.5, so training follows the paper's unmasked ``α, β, γ`` loss. The logged terms are
the unweighted, unmasked values.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from monai.losses import DiceLoss, DiffusionLoss, GlobalMutualInformationLoss
from monai.networks.layers import GaussianFilter
from torch import nn

from ..errors import InputError
from ..registration.learned.spatial import warp

#: Registration weight assumed when the outputs hold no ``"task_mask"`` (gives the unmasked loss).
EVEN_TASK_WEIGHT = 0.5


def valid_label_channels(fixed_label: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` bool: which (item, channel) pairs of a ``(B, L, D, H, W)`` fixed label hold any voxel."""
    return fixed_label.flatten(2).amax(dim=2) > 0


def gradient_energy(field: torch.Tensor) -> torch.Tensor:
    """``||∇φ(p)||²`` (sum over components and axes of squared central differences, voxel units) on the
    interior voxels of a ``(B, 3, D, H, W)`` field: ``(B, 1, D-2, H-2, W-2)``."""
    return DiffusionLoss(reduction="none")(field).sum(dim=1, keepdim=True)


def interior(volume: torch.Tensor) -> torch.Tensor:
    """``volume[..., 1:-1, 1:-1, 1:-1]``: the voxels where central differences are defined."""
    return volume[..., 1:-1, 1:-1, 1:-1]


class ECMCALoss(nn.Module):
    """Seed 001's loss: ``α·L_grad + β·L_Dice + γ·L_MI`` with the task mask splitting registration and smoothing.

    Args:
        dice_weight: ``β`` (paper: 1.0).
        mi_weight: ``γ`` (paper: 1.0).
        gradient_weight: ``α`` (paper: 0.4).
        num_bins: histogram bins of the mutual information.
        field_key: output key of the field whose gradient is penalised (``"velocity"``; ``"ddf"`` for
            networks without a velocity).
        detach_task_mask: stop the loss's gradient into the task mask (default; ``False`` is the paper's
            literal reading, which collapses the mask onto one task, see the module docstring).
        label_sigmas: Gaussian sigmas (grid voxels, 0 = unsmoothed) of the multi-scale label Dice; the default
            ``(0,)`` is the paper's plain Dice.
    """

    def __init__(self, dice_weight: float = 1.0, mi_weight: float = 1.0, gradient_weight: float = 0.4,
                 num_bins: int = 23, field_key: str = "velocity", detach_task_mask: bool = True,
                 label_sigmas: Sequence[float] = (0.0,)) -> None:
        super().__init__()
        if not label_sigmas or any(float(sigma) < 0 for sigma in label_sigmas):
            raise ValueError(f"label_sigmas must be one or more sigmas >= 0 (grid voxels), got {label_sigmas!r}")
        self.smoothers = nn.ModuleList([GaussianFilter(3, float(sigma)) if float(sigma) > 0 else nn.Identity()
                                        for sigma in label_sigmas])
        self.dice_weight, self.mi_weight = float(dice_weight), float(mi_weight)
        self.gradient_weight = float(gradient_weight)
        self.field_key = str(field_key)
        self.detach_task_mask = bool(detach_task_mask)
        self.dice = DiceLoss(reduction="none")
        self.mutual_information = GlobalMutualInformationLoss(kernel_type="b-spline", num_bins=int(num_bins),
                                                              reduction="none")

    def _task_mask(self, outputs: Mapping[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        mask = outputs.get("task_mask")
        if mask is None:
            return torch.full_like(like[:, :1], EVEN_TASK_WEIGHT)
        return mask.detach() if self.detach_task_mask else mask

    def label_dice(self, warped_label: torch.Tensor, fixed_label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pair Dice loss ``(B, L)`` (mean over ``label_sigmas``) and the ``(B, L)`` validity of the pairs
        (fixed channel not empty)."""
        if warped_label.shape != fixed_label.shape:
            raise InputError(f"moving_label {tuple(warped_label.shape)} and fixed_label {tuple(fixed_label.shape)} "
                             "differ in shape")
        dice = torch.stack([self.dice(smooth(warped_label), smooth(fixed_label)).flatten(1)
                            for smooth in self.smoothers]).mean(dim=0)
        return dice, valid_label_channels(fixed_label)

    def gland_mutual_information(self, warped: torch.Tensor, fixed: torch.Tensor,
                                 gland: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-item MI loss (``-MI``) over the fixed gland's voxels, ``(B,)``, and the ``(B,)`` validity."""
        inside = gland[:, 0] > 0.5
        losses = [self.mutual_information(w[0][m][None, None], f[0][m][None, None])[0] if m.any()
                  else warped.new_zeros(()) for w, f, m in zip(warped, fixed, inside)]
        return torch.stack(losses), inside.flatten(1).any(dim=1)

    def forward(self, outputs: Mapping[str, torch.Tensor],
                batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """
        Args:
            outputs: network outputs: ``"ddf"`` ``(B, 3, D, H, W)`` (voxels, pull), ``field_key`` (same shape),
                optionally ``"task_mask"`` ``(B, 1, D, H, W)`` in [0, 1].
            batch: ``"fixed_image"``, ``"moving_image"`` ``(B, 1, D, H, W)``; ``"fixed_label"``,
                ``"moving_label"`` ``(B, L, D, H, W)`` in {0, 1}, channel 0 the gland.

        Returns:
            ``"total"`` (the weighted, masked sum) and the unweighted terms ``"dice"``, ``"mi"``,
            ``"gradient"``; scalars.
        """
        ddf, field = outputs["ddf"], outputs[self.field_key]
        fixed_label = batch["fixed_label"]
        mask = self._task_mask(outputs, ddf)
        item_weight = 2.0 * mask.flatten(1).mean(dim=1)  # (B,) 2·m_n

        dice, valid = self.label_dice(warp(batch["moving_label"], ddf), fixed_label)
        valid = valid.to(dice.dtype)
        pairs = valid.sum().clamp_min(1.0)
        mi, has_gland = self.gland_mutual_information(warp(batch["moving_image"], ddf), batch["fixed_image"],
                                                      fixed_label[:, :1])
        has_gland = has_gland.to(mi.dtype)
        items = has_gland.sum().clamp_min(1.0)
        energy = gradient_energy(field)

        terms = {"dice": (dice * valid).sum() / pairs, "mi": (mi * has_gland).sum() / items,
                 "gradient": energy.mean()}
        total = (self.dice_weight * (item_weight[:, None] * dice * valid).sum() / pairs
                 + self.mi_weight * (item_weight * mi * has_gland).sum() / items
                 + self.gradient_weight * (2.0 * (1.0 - interior(mask)) * energy).mean())
        return {"total": total, **terms}
