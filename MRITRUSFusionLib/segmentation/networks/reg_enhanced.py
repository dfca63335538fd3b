"""Registration-enhanced TRUS tumour segmentation of seed 000: ViT affine branch + 3D U-Net (paper §3.2).

Steps 7–9 of the paper on top of :class:`~MRITRUSFusionLib.registration.learned.vit_affine.ViTAffine`
(steps 1–6): the merged TRUS features ``T_merge`` and the aligned MRI features ``M̂_merge`` are upsampled
(trilinear, ×2) to the input grid, added to the TRUS and to the aligned MRI ``M̂_init`` respectively, and
the two sums are concatenated (MRI first, Eq. 7) as the input of a 3D U-Net that outputs background/tumour
logits on the TRUS grid (Eq. 8). With ``F`` feature channels each sum has ``F`` channels (the one-channel
image is broadcast), so the U-Net takes ``2F`` channels (2 with the paper's ``F = 1``).

The registration branch is the attribute ``registration`` (parameter names ``registration.*``), the U-Net
``unet`` (``unet.*``): the paper's two phases pre-train the first with the registration losses, then train
the whole (or the U-Net with the branch frozen) with the segmentation loss added.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import nn

from ...registration.learned.vit_affine import ViTAffine

#: Output channels: background and tumour logits.
OUT_CHANNELS = 2


class RegEnhancedUNet(nn.Module):
    """TRUS + MRI (on the TRUS grid) → tumour logits, with the affine registration inside the network.

    Args:
        spatial_size: ``(D, H, W)`` of the input grid (multiples of 16; see :class:`ViTAffine`).
        registration_args: keyword arguments of :class:`ViTAffine` other than ``spatial_size``.
        channels: U-Net feature channels per level, coarsest last; one more entry than ``strides``.
        strides: U-Net downsampling factors between levels.
        num_res_units: residual units per U-Net level.
        dropout: dropout probability in the U-Net blocks.
        norm: MONAI normalisation of the U-Net (``"instance"``, ``"batch"``...).
    """

    def __init__(self, spatial_size: Sequence[int], registration_args: Optional[Mapping[str, Any]] = None,
                 channels: Sequence[int] = (8, 16, 32, 64), strides: Sequence[int] = (2, 2, 2),
                 num_res_units: int = 1, dropout: float = 0.0, norm: str = "instance") -> None:
        super().__init__()
        self.registration = ViTAffine(spatial_size, **dict(registration_args or {}))
        self.unet = UNet(spatial_dims=3, in_channels=2 * self.registration.feature_channels,
                         out_channels=OUT_CHANNELS, channels=tuple(channels), strides=tuple(strides),
                         num_res_units=int(num_res_units), dropout=float(dropout), norm=norm)

    def forward(self, trus: torch.Tensor, mri: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            trus: ``(B, 1, D, H, W)`` z-scored TRUS (fixed).
            mri: ``(B, 1, D, H, W)`` z-scored MRI resampled onto the TRUS grid (moving).

        Returns:
            ``"logits"`` ``(B, 2, D, H, W)`` on the TRUS grid, plus every output of :class:`ViTAffine`
            (``"ddf"``, ``"theta"``, ``"warped_moving"``, ``"fixed_features"``, ``"moving_features"``,
            ``"fixed_log_distribution"``, ``"moving_log_distribution"``) for the registration losses.
        """
        registered = self.registration(trus, mri)
        size = trus.shape[2:]
        mri_up = F.interpolate(registered["moving_features"], size=size, mode="trilinear", align_corners=False)
        trus_up = F.interpolate(registered["fixed_features"], size=size, mode="trilinear", align_corners=False)
        fused = torch.cat([mri_up + registered["warped_moving"], trus_up + trus], dim=1)
        return {"logits": self.unet(fused), **registered}
