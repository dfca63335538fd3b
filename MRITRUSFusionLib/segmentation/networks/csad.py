"""CSAD (seed 004): two-stream T2W/ADC tumour segmentation with cross-modal self-attention distillation.

Re-implemented from the text of Zhang et al., "Cross-Modal Self-Attention Distillation for Prostate
Cancer Segmentation" (§III, Fig. 1):

* a **two-stream encoder**, one stream per modality (T2W, ADC; separate weights), of ``N`` encoder blocks
  (paper: ``N = 5``, ``m ∈ [1, 5]``); block ``m`` outputs ``F_m^k`` and is followed by a 2× max-pool;
* an **attention map generation block** (AMGB, Eq. 1–2, no parameters) after every encoder block of both
  streams: ``χ(F) = G(R(P(F)))``, the features upsampled (``P``) to a common target size, the spatial map
  ``R(F) = Σ_t |F_t|²`` over channels and the spatial softmax ``G``. The maps feed the interlaced
  distillation loss ``AMGB_m^k ↔ AMGB_{m+1}^k̂`` (Eq. 3, :mod:`MRITRUSFusionLib.losses.csad`);
* the **spatial correlated feature fusion** (SCFF, Eq. 5–7) of the last encoder outputs of the streams;
* a **decoder** turning the fused features into the segmentation logits.

Interpretations where the text is silent or ambiguous:

* The target size of ``P`` is the spatial size of the first encoder block's output (the input size), the
  same for every layer, so all maps of both streams are comparable; ``P`` is (bi/tri)linear interpolation.
* The encoder blocks are MONAI ``TwoConv`` blocks (two 3×3 convolutions, norm, activation) and the decoder
  is a U-Net decoder (MONAI ``UpCat``) whose skip at level ``m`` is the concatenation ``F_m^T2W ∥ F_m^ADC``;
  the paper states neither the block type nor whether the decoder has skips.
* SCFF's "spatial softmax" of ``Z`` (one matrix used as ``Z_G`` and ``Z_G^T`` in Eq. 7) is taken over the
  ADC index ``j`` (``softmax(Z, dim=-1)``, rows sum to 1), so the ADC term gathers ADC features at every
  T2W position with normalised weights, and the T2W term spreads T2W features to ADC positions with the
  same weights (Eq. 7 literally). ``C̃`` (``fused_channels``) defaults to the bottleneck width.
* Output: ``out_channels = 2`` (background, tumour logits) by default, so ``softmax(logits)[:, 1]`` is the
  tumour probability as elsewhere in this package. Because ``softmax(l)[1] = sigmoid(l_1 - l_0)`` this is
  the paper's single sigmoid output (Eq. 11); ``out_channels = 1`` gives that single logit directly. The
  loss accepts both.
* ``spatial_dims = 3`` is a 3D variant (3×3×3 convolutions, attention over all voxels); the paper is 2D.

**MRI alone (T2W only).** The paper always has both modalities and offers no single-modality path. Here,
``forward(t2w)`` (no ADC) uses the T2W features in place of the missing ADC features: SCFF becomes the
self-correlation of the T2W bottleneck and each skip is ``F_m^T2W ∥ F_m^T2W``; no ADC attention maps are
returned, so the distillation term is skipped (zero). This path only works as well as it is trained:
``adc_dropout = p`` drops the ADC input of a training batch with probability ``p`` (modality dropout), so
one network learns both the two-stream and the T2W-only paths. With ``p = 0`` (paper) T2W-only inference
is untrained and not meaningful.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat
from torch import nn

from ...errors import InputError

#: Default output channels: background and tumour logits.
OUT_CHANNELS = 2


def log_attention_map(features: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The AMGB ``χ(F) = G(R(P(F)))`` of Eq. 1–2, returned as a log-probability map (numerically stable).

    Args:
        features: ``F``, ``(B, C, *S)`` feature maps of one encoder block (2D or 3D).
        size: target spatial size (voxels) of ``P``; ``features`` are interpolated (bi/trilinear) to it
            when their size differs.

    Returns:
        ``log A``, ``(B, 1, *size)``; ``A = exp(log A)`` is the spatial softmax of ``Σ_t |F_t|²`` and sums
        to 1 over the spatial dimensions of every sample.
    """
    size = tuple(int(s) for s in size)
    if tuple(features.shape[2:]) != size:
        mode = "bilinear" if len(size) == 2 else "trilinear"
        features = F.interpolate(features, size=size, mode=mode, align_corners=False)
    spatial = features.pow(2).sum(dim=1, keepdim=True)  # R: Σ_t |F_t|², (B, 1, *size)
    return F.log_softmax(spatial.flatten(2), dim=-1).view_as(spatial)  # G: spatial softmax


class SpatialCorrelatedFeatureFusion(nn.Module):
    """SCFF (Eq. 5–7): ``F_corr = Ω(F̂_T2 ⊗ Z_G) ∥ Ω(F̂_ADC ⊗ Z_G^T)``.

    A shared 1×1 convolution maps both inputs to ``C̃`` channels; ``z_ij = x_iᵀ y_j / C̃`` correlates T2W
    position ``i`` with ADC position ``j``; ``Z_G = softmax_j(Z)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: ``C``, channels of both inputs.
        fused_channels: ``C̃``, channels of each half of the output.
    """

    def __init__(self, spatial_dims: int, in_channels: int, fused_channels: int) -> None:
        super().__init__()
        self.project = Conv[Conv.CONV, spatial_dims](in_channels, fused_channels, kernel_size=1)
        self.fused_channels = int(fused_channels)

    def forward(self, t2w: torch.Tensor, adc: torch.Tensor) -> torch.Tensor:
        """
        Args:
            t2w: ``F_T2``, ``(B, C, *S)``.
            adc: ``F_ADC``, ``(B, C, *S)``, same shape.

        Returns:
            ``F_corr``, ``(B, 2·C̃, *S)``: the T2W half first.
        """
        x = self.project(t2w).flatten(2)  # F̂_T2, (B, C̃, n)
        y = self.project(adc).flatten(2)  # F̂_ADC, (B, C̃, n)
        z = torch.bmm(x.transpose(1, 2), y) / self.fused_channels  # Z, (B, n, n): z_ij = x_iᵀ y_j / C̃
        z_g = torch.softmax(z, dim=-1)
        fused = torch.cat([torch.bmm(x, z_g), torch.bmm(y, z_g.transpose(1, 2))], dim=1)
        return fused.view(t2w.shape[0], 2 * self.fused_channels, *t2w.shape[2:])


class StreamEncoder(nn.Module):
    """One modality stream: ``TwoConv`` at full size, then ``Down`` (2× max-pool + ``TwoConv``) per level.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels of the stream.
        channels: output channels of each encoder block (``N`` entries).
        act, norm, dropout: MONAI layer arguments of every block.
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: Sequence[int], act: Union[str, tuple],
                 norm: Union[str, tuple], dropout: float) -> None:
        super().__init__()
        blocks = [TwoConv(spatial_dims, in_channels, channels[0], act, norm, True, dropout)]
        blocks += [Down(spatial_dims, c_in, c_out, act, norm, True, dropout)
                   for c_in, c_out in zip(channels[:-1], channels[1:])]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """``(B, in_channels, *S)`` → ``[F_1, ..., F_N]``, ``F_m`` of shape ``(B, channels[m-1], *S / 2^(m-1))``."""
        features = []
        for block in self.blocks:
            image = block(image)
            features.append(image)
        return features


class CSADNet(nn.Module):
    """Two-stream CSAD network (T2W, ADC) → tumour logits and per-layer attention maps.

    Args:
        spatial_dims: 2 (paper: 2D slices) or 3.
        in_channels_per_stream: image channels of each stream (1: the T2W, resp. ADC, image).
        out_channels: 2 (background, tumour logits; default) or 1 (a single sigmoid tumour logit).
        channels: output channels of the ``N`` encoder blocks of each stream (paper: ``N = 5``); the input's
            spatial sides must be multiples of ``2^(N-1)``.
        fused_channels: ``C̃`` of SCFF (default ``channels[-1]``).
        act, norm, dropout: MONAI layer arguments of every convolution block.
        adc_dropout: probability of training a batch without its ADC input (T2W-only path, see the module
            docstring); 0 in the paper.
    """

    def __init__(self, spatial_dims: int = 2, in_channels_per_stream: int = 1, out_channels: int = OUT_CHANNELS,
                 channels: Sequence[int] = (8, 16, 32, 48, 96), fused_channels: Optional[int] = None,
                 act: Union[str, tuple] = "relu", norm: Union[str, tuple] = "instance", dropout: float = 0.0,
                 adc_dropout: float = 0.0) -> None:
        super().__init__()
        if spatial_dims not in (2, 3) or len(channels) < 2:
            raise InputError(f"CSADNet: spatial_dims must be 2 or 3 and channels have >= 2 entries, got "
                             f"{spatial_dims} and {tuple(channels)}")
        channels = [int(c) for c in channels]
        fused = int(fused_channels or channels[-1])
        self.spatial_dims, self.adc_dropout = int(spatial_dims), float(adc_dropout)
        self.t2w_encoder = StreamEncoder(spatial_dims, in_channels_per_stream, channels, act, norm, dropout)
        self.adc_encoder = StreamEncoder(spatial_dims, in_channels_per_stream, channels, act, norm, dropout)
        self.fusion = SpatialCorrelatedFeatureFusion(spatial_dims, channels[-1], fused)
        decoder, previous = [], 2 * fused
        for width in reversed(channels[:-1]):
            decoder.append(UpCat(spatial_dims, previous, 2 * width, width, act, norm, True, dropout))
            previous = width
        self.decoder = nn.ModuleList(decoder)
        self.head = Conv[Conv.CONV, spatial_dims](channels[0], int(out_channels), kernel_size=1)

    def _uses_adc(self, adc: Optional[torch.Tensor]) -> bool:
        if adc is None:
            return False
        return not (self.training and self.adc_dropout > 0 and torch.rand(()).item() < self.adc_dropout)

    def forward(self, t2w: torch.Tensor, adc: Optional[torch.Tensor] = None) -> dict[str, object]:
        """
        Args:
            t2w: ``(B, in_channels_per_stream, *S)`` T2W image (``S`` 2 or 3 sides, multiples of ``2^(N-1)``).
            adc: ADC image of the same shape on the same grid, or ``None`` (T2W-only path).

        Returns:
            ``"logits"``: ``(B, out_channels, *S)``;
            ``"log_attention_t2w"``: list of ``N`` maps ``log χ(F_m^T2W)``, each ``(B, 1, *S)``;
            ``"log_attention_adc"``: the same for the ADC stream, empty when the ADC is absent or dropped.
            ``exp`` of a map is the attention map (sums to 1 over ``S``).
        """
        if t2w.dim() != self.spatial_dims + 2 or (adc is not None and adc.shape != t2w.shape):
            raise InputError(f"CSADNet: expected (B, C, *S) inputs with {self.spatial_dims} spatial dimensions and "
                             f"an ADC of the T2W's shape, got {tuple(t2w.shape)} and "
                             f"{None if adc is None else tuple(adc.shape)}")
        t2w_features = self.t2w_encoder(t2w)
        use_adc = self._uses_adc(adc)
        adc_features = self.adc_encoder(adc) if use_adc else t2w_features
        x = self.fusion(t2w_features[-1], adc_features[-1])
        for level, up in enumerate(self.decoder, start=2):
            x = up(x, torch.cat([t2w_features[-level], adc_features[-level]], dim=1))
        size = t2w.shape[2:]
        return {
            "logits": self.head(x),
            "log_attention_t2w": [log_attention_map(f, size) for f in t2w_features],
            "log_attention_adc": [log_attention_map(f, size) for f in adc_features] if use_adc else [],
        }
