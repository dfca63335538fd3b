"""Attention-Reg (seed 002): rigid MRI–TRUS registration with cross-modal attention, from the paper's text.

Structure (paper §2, Fig. 1 and 3):

* two **modality-specific feature extractors** (separate weights), each a stack of convolution +
  max-pooling sets (two in the paper), turning each volume into a coarse feature map;
* two **cross-modal attention blocks** (Eq. 1), one with the TRUS features as primary input ``P`` and the
  MRI features as cross-modal input ``C``, the other the other way round. Every location ``i`` of ``C``
  gathers the features of *all* locations ``j`` of ``P`` weighted by ``softmax_j(θ(c_i)ᵀ φ(p_j))`` (``f = exp``,
  normalised; no temperature), through linear (1×1×1) embeddings ``θ``, ``φ``, ``g``; the output is
  ``Z = Y + P``;
* the **deep registration module**: the two blocks' outputs concatenated, three convolution layers and
  fully connected layers regressing the 6 rigid parameters.

Differences from the paper, all options: channel counts are small by default (CPU-friendly; the paper's
features have 32 channels), the fully connected head sees the registration features average-pooled to a
fixed size (``pooled_size``) so any input size works, ``use_masks`` adds a gland mask as a second input
channel of each extractor (the paper's "label" variant instead feeds the MRI gland mask in place of the MRI,
which needs no option), ``attention=False`` is the paper's "Feature-Reg" ablation (features concatenated
without the attention blocks), and ``identity_init`` zeroes the last layer so an untrained network returns
the identity.

**Inputs and output (this project's roles: TRUS fixed, MRI moving).** ``forward(trus, mri)`` takes two
patches of the same shape ``(B, 1, D, H, W)`` on the *same* grid — a crop of the TRUS grid, with the MRI
resampled onto it through the current transform estimate ``T_cur`` (tensor layout as in
:mod:`.spatial`). It returns ``(B, 6)`` rigid parameters ``(tx, ty, tz, ax, ay, az)`` (mm, degrees, LPS;
convention of :mod:`.spatial`) of a correction ``Δ`` about the patch centre, meant to be trained so that
the improved estimate is ``T_new(x) = T_cur(Δ(x))``: ``CompositeTransform`` of ``T_cur`` then
``rigid_params_to_euler(params, patch_centre)``. The seed's iterative refinement applies trained stages
in turn, resampling the MRI through ``T_new`` between stages. The attention matrices have
``(D·H·W / 8**levels)²`` entries per sample and block (512² for 32³ input and 2 levels).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

from ...errors import InputError

#: Number of outputs: rigid parameters (tx, ty, tz, ax, ay, az).
RIGID_PARAMETERS = 6


class CrossModalAttention(nn.Module):
    """The cross-modal (non-local) attention block of seed 002, Eq. 1.

    ``y_i = Σ_j softmax_j(θ(c_i)ᵀ φ(p_j)) g(p_j)`` and ``Z = Y + P``: each location of the cross-modal input
    ``C`` summarises the whole primary input ``P``, weighted by cross-modal feature correlation, added to
    ``P`` at the same location (so ``P`` and ``C`` share their spatial shape).

    Args:
        in_channels: feature channels of ``P`` and ``C`` (also of the output).
        embed_channels: channels of the ``θ``/``φ`` embeddings (default ``in_channels // 2``, >= 1).
    """

    def __init__(self, in_channels: int, embed_channels: Optional[int] = None) -> None:
        super().__init__()
        embed = int(embed_channels) if embed_channels else max(in_channels // 2, 1)
        self.in_channels = int(in_channels)
        self.theta = nn.Conv3d(in_channels, embed, kernel_size=1)  # applied to C
        self.phi = nn.Conv3d(in_channels, embed, kernel_size=1)  # applied to P
        self.g = nn.Conv3d(in_channels, in_channels, kernel_size=1)  # applied to P

    def forward(self, primary: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
        """
        Args:
            primary: ``P``, ``(B, F, D, H, W)`` features.
            cross: ``C``, ``(B, F, D, H, W)`` features of the other modality, same shape as ``primary``.

        Returns:
            ``Z = Y + P``, ``(B, F, D, H, W)``.
        """
        if primary.shape != cross.shape or primary.dim() != 5 or primary.shape[1] != self.in_channels:
            raise InputError(f"cross-modal attention: expected two (B, {self.in_channels}, D, H, W) feature maps of "
                             f"the same shape, got {tuple(primary.shape)} and {tuple(cross.shape)}")
        batch, channels = primary.shape[:2]
        query = self.theta(cross).flatten(2).transpose(1, 2)[:, None]  # (B, 1, N, E): θ(c_i)
        key = self.phi(primary).flatten(2).transpose(1, 2)[:, None]  # (B, 1, N, E): φ(p_j)
        value = self.g(primary).flatten(2).transpose(1, 2)[:, None]  # (B, 1, N, F): g(p_j)
        # softmax_j(q_i · k_j) v_j with scale 1 is exactly Eq. 1 (f = exp, normalised over j); the fused
        # kernel avoids storing the N×N matrix where the backend allows it.
        attended = F.scaled_dot_product_attention(query, key, value, scale=1.0)  # (B, 1, N, F)
        y = attended[:, 0].transpose(1, 2).reshape(batch, channels, *primary.shape[2:])
        return y + primary


class FeatureExtractor(nn.Sequential):
    """A modality-specific feature extractor: per level a 3×3×3 convolution (norm, ReLU) and a 2× max-pool.

    Args:
        in_channels: input channels (1 image, 2 with a mask).
        channels: output channels of each level; the number of entries is the number of levels (2 in the
            paper), each halving the spatial size.
        norm: MONAI normalisation name (``"batch"``, ``"instance"``...).
    """

    def __init__(self, in_channels: int, channels: Sequence[int], norm: Union[str, tuple] = "batch") -> None:
        layers = []
        previous = in_channels
        for out in channels:
            layers += [Convolution(3, previous, int(out), kernel_size=3, act="RELU", norm=norm),
                       nn.MaxPool3d(kernel_size=2)]
            previous = int(out)
        super().__init__(*layers)


class AttentionReg(nn.Module):
    """Attention-Reg: TRUS and MRI patches → 6 rigid parameters of seed 002.

    Args:
        extractor_channels: channels of each level of the two feature extractors (the last is the feature
            width ``F`` of the attention blocks); ``len`` = number of conv+max-pool sets (paper: 2), so patch
            sides must be multiples of ``2**len``.
        attention_channels: embedding channels of ``θ``/``φ`` in the attention blocks (default ``F // 2``).
        regressor_channels: output channels of the three convolutions of the deep registration module.
        pooled_size: spatial size the registration features are average-pooled to before the fully connected
            layers (keeps coarse position information, and makes the head independent of the patch size).
        hidden_features: width of the hidden fully connected layer.
        use_masks: each extractor takes two channels, image and gland mask (``trus_mask``/``mri_mask`` are
            then required in :meth:`forward`).
        attention: ``False`` gives the paper's "Feature-Reg" ablation (no attention blocks).
        identity_init: zero the last fully connected layer, so the untrained network returns exactly zero
            parameters (the identity transform). Gradients then reach the earlier layers from the second
            optimiser step on.
        norm: MONAI normalisation of the convolutions (``"batch"`` as in the paper's era; ``"instance"`` for
            batches of one).
    """

    def __init__(self, extractor_channels: Sequence[int] = (8, 16), attention_channels: Optional[int] = None,
                 regressor_channels: Sequence[int] = (32, 16, 8), pooled_size: Union[int, Sequence[int]] = 4,
                 hidden_features: int = 64, use_masks: bool = False, attention: bool = True,
                 identity_init: bool = True, norm: Union[str, tuple] = "batch") -> None:
        super().__init__()
        if len(extractor_channels) < 1 or len(regressor_channels) != 3:
            raise ValueError("extractor_channels needs >= 1 entry and regressor_channels exactly 3 (the paper's "
                             f"three convolutions); got {extractor_channels} and {regressor_channels}")
        self.use_masks = bool(use_masks)
        self.levels = len(extractor_channels)
        in_channels = 2 if use_masks else 1
        features = int(extractor_channels[-1])
        self.trus_features = FeatureExtractor(in_channels, extractor_channels, norm)
        self.mri_features = FeatureExtractor(in_channels, extractor_channels, norm)
        self.trus_attention = CrossModalAttention(features, attention_channels) if attention else None
        self.mri_attention = CrossModalAttention(features, attention_channels) if attention else None
        convolutions = []
        previous = 2 * features
        for out in regressor_channels:
            convolutions.append(Convolution(3, previous, int(out), kernel_size=3, act="RELU", norm=norm))
            previous = int(out)
        self.registrator = nn.Sequential(*convolutions)
        pooled = (int(pooled_size),) * 3 if isinstance(pooled_size, int) else tuple(int(s) for s in pooled_size)
        self.pool = nn.AdaptiveAvgPool3d(pooled)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(previous * pooled[0] * pooled[1] * pooled[2],
                                                          int(hidden_features)),
                                  nn.ReLU(inplace=True), nn.Linear(int(hidden_features), RIGID_PARAMETERS))
        if identity_init:
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

    def _inputs(self, image: torch.Tensor, mask: Optional[torch.Tensor], name: str) -> torch.Tensor:
        if image.dim() != 5 or image.shape[1] != 1:
            raise InputError(f"{name}: expected a (B, 1, D, H, W) tensor, got shape {tuple(image.shape)}")
        step = 2 ** self.levels
        if any(s % step for s in image.shape[2:]):
            raise InputError(f"{name}: each spatial size must be a multiple of {step} ({self.levels} pooling "
                             f"levels), got {tuple(image.shape[2:])}")
        if not self.use_masks:
            if mask is not None:
                raise InputError(f"{name} mask given but the network was built with use_masks=False")
            return image
        if mask is None or mask.shape != image.shape:
            raise InputError(f"{name} mask: required (use_masks=True) with the image's shape {tuple(image.shape)}")
        return torch.cat([image, mask.to(image.dtype)], dim=1)

    def forward(self, trus: torch.Tensor, mri: torch.Tensor, trus_mask: Optional[torch.Tensor] = None,
                mri_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            trus: ``(B, 1, D, H, W)`` fixed TRUS patch (normalised intensities).
            mri: ``(B, 1, D, H, W)`` MRI patch resampled on the same grid through the current estimate (or
                the MRI gland mask, for the paper's "label" variant).
            trus_mask: ``(B, 1, D, H, W)`` TRUS gland mask in {0, 1}; only with ``use_masks``.
            mri_mask: ``(B, 1, D, H, W)`` MRI gland mask on the same grid; only with ``use_masks``.

        Returns:
            ``(B, 6)`` rigid parameters ``(tx, ty, tz, ax, ay, az)`` of the correction (mm, degrees).
        """
        if trus.shape != mri.shape:
            raise InputError(f"trus and mri patches must have the same shape, got {tuple(trus.shape)} and "
                             f"{tuple(mri.shape)}")
        trus_features = self.trus_features(self._inputs(trus, trus_mask, "trus"))
        mri_features = self.mri_features(self._inputs(mri, mri_mask, "mri"))
        if self.trus_attention is not None:
            trus_out = self.trus_attention(trus_features, mri_features)
            mri_out = self.mri_attention(mri_features, trus_features)
        else:
            trus_out, mri_out = trus_features, mri_features
        fused = self.registrator(torch.cat([trus_out, mri_out], dim=1))
        return self.head(self.pool(fused))
