"""E-CMCA + LSTM (seed 001): deformable MRI–TRUS registration with cross-modal channel attention, from the text.

Structure (paper §3.3, Fig. 2–4), TRUS fixed, MRI moving, both ``(B, 1, D, H, W)`` on the same grid:

* **dual encoders** (separate weights): per level a ConvBlock (3×3×3 convolution + LeakyReLU) then a 2×
  max-pool; four levels, so the grid is downsampled to ``/16`` (sizes must be multiples of 16);
* an **E-CMCA** block at each level (:class:`ECMCA`) on the pooled MRI and TRUS features: multi-scale
  feature aggregation (MSFA: 3/5/7 convolutions weighted by a softmax over scales of ``GAP + GMP``), dynamic
  channel attention (DCA: sigmoid of a channel bottleneck on ``GAP``) and the cross-modal attention gate
  ``att = σ(W3ᵀ ReLU(W1ᵀ F_DCA,MRI + W2ᵀ F_DCA,TRUS + b12) + b3)``;
* a **FuseConv** (1×1×1 convolution + LeakyReLU of the concatenated enhanced MRI and TRUS features) at each
  level, giving the skip connections; the deepest one (``2·C → C``) is the bottleneck;
* a **decoder** of four levels (trilinear 2× upsampling, concatenation of the skip, ConvBlock) back to the
  input grid, optional refinement ConvBlocks, and a 3×3×3 convolution to a **stationary velocity field**;
* the **LSTM spatial deformation module** (:class:`DepthSliceLSTM`): the velocity split along depth into
  ``T = 10`` pseudo-temporal slices, each slice a time step of a 2-layer LSTM (128 hidden units) whose
  outputs are mapped back to the field by a fully connected layer;
* **VecInt**: scaling and squaring with 7 steps (:func:`.spatial.integrate_velocity`);
* the **task-mask subnet** (:class:`TaskMaskNet`): per batch item and pseudo-temporal slice, a softmax over
  the weights of registration (task 1) and deformation smoothing (task 2), from the decoder features.

Choices where the paper is ambiguous or infeasible (all documented at the classes):

* *Pooling before E-CMCA.* The paper's example puts the first E-CMCA at half resolution (``32×64³`` for a
  128³ input) and its decoder has four 2× upsamplings, so each encoder level pools before its E-CMCA and
  the bottleneck is at ``/16`` (the paper's "128 to 16" counts one level fewer). The full-resolution skip
  of the last decoder level is the input pair (moving, fixed), as in VoxelMorph.
* *Encoders stay modality-specific.* The E-CMCA output feeds the FuseConv skip only; each encoder continues
  from its own (un-gated) features, so the two encoders process the modalities "separately" and the
  sigmoid gates do not shrink the features level after level.
* *One attention map for both modalities.* The paper writes ``F̂2 = att ⊙ F2`` (TRUS only) but fuses
  ``[ECMCA(x_moving), ECMCA(x_fixed)]``; the single-channel spatial map ``att`` gates the DCA features of
  both modalities (``F̂_i = att ⊙ F_DCA,i``), so the multi-scale, channel-recalibrated features reach the
  FuseConv ("the resulting enhanced features are passed to FuseConv").
* *Shared MSFA and DCA.* ``Conv_k`` and ``Conv1D`` carry no modality index in the paper: one MSFA and one
  DCA serve both modalities; ``W1`` (MRI) and ``W2`` (TRUS) of the attention gate are separate. The MSFA
  convolutions are depthwise by default (``depthwise_msfa``; one 3/5/7 filter per channel) to fit the CPU
  budget; ``False`` gives the dense convolutions of the text. The DCA "Conv1D" is the reduce-expand form
  the text describes: kernel-1 convolutions ``C → C/r → C`` with ReLU between.
* *LSTM on a coarse in-plane grid, as a residual, before integration.* Flattening a full slice (589,824
  values at 128³) into a 128-unit LSTM needs ~10⁸ weights and would make the whole field a function of
  128 numbers per slice. Each slice is average-pooled in-plane to ``lstm_grid`` (and over its depths), the
  LSTM output mapped back by the fully connected layer to that coarse slice, the ``T`` coarse slices
  trilinearly upsampled to the grid and *added* to the decoder's velocity. The fully connected layer
  starts at zero, so the module starts as the identity. It acts on the velocity *before* VecInt, so the
  final transform stays the exponential of a smooth field (diffeomorphic); ``"velocity"`` in the output is
  the refined field that is integrated.
* *Task-mask subnet: pooling first.* The paper lists both "FC layers followed by GAP" and "GAP extracts
  feature vectors, which are fed into FC layers"; the second is used (average over each pseudo-temporal
  slice of the last decoder features, then per branch ``Linear(C, 256)`` + ReLU + ``Linear(256, 1)``), which
  is also far cheaper. The registration weight ``M[n, t, 0]`` is returned as a voxel map ``"task_mask"``
  (constant over each slice); the smoothing weight is ``1 - task_mask``.
* *LeakyReLU slope 0.2* (VoxelMorph's; the paper gives none). No normalisation layers (the paper names
  none).

Defaults are small (encoder ``(8, 16, 16, 16)``, decoder ``(16, 16, 16, 8)``; 436 k parameters, 322 k of
them the LSTM module): a 64³ forward costs about 0.4 CPU-seconds (one thread), a training step about 1.8.
The paper's widths are ``encoder_channels=(16, 32, 32, 32)``, ``decoder_channels=(32, 32, 32, 16)``,
``refine_channels=(32, 16, 16)`` (743 k parameters, about 0.95 CPU-seconds per 64³ forward).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

from ...errors import InputError
from .spatial import DEFAULT_INTEGRATION_STEPS, integrate_velocity

#: Downsampling factor of the encoder (four 2× max-pools): every input size must be a multiple of it.
GRID_MULTIPLE = 16
#: Negative slope of every LeakyReLU (ConvBlock, FuseConv, DCA bottleneck).
NEGATIVE_SLOPE = 0.2
LEAKY_RELU = ("leakyrelu", {"negative_slope": NEGATIVE_SLOPE})


def conv_block(in_channels: int, out_channels: int, kernel_size: int = 3) -> Convolution:
    """The paper's ConvBlock (``kernel_size``³ convolution, "same" padding, LeakyReLU 0.2); no normalisation."""
    return Convolution(3, int(in_channels), int(out_channels), kernel_size=kernel_size, act=LEAKY_RELU, norm=None)


def depth_slice_pool(field: torch.Tensor, slices: int, in_plane: Sequence[int] = (1, 1)) -> torch.Tensor:
    """Average of ``field`` over each of ``slices`` depth slabs (and in-plane cells): ``(B, C, T, h, w)``.

    Slab ``t`` covers the depths ``d`` with ``floor(d·T/D) = t`` (adaptive pooling: slabs of ``D/T`` voxels,
    sharing a boundary voxel where ``D/T`` is not an integer).
    """
    return F.adaptive_avg_pool3d(field, (int(slices), int(in_plane[0]), int(in_plane[1])))


class MultiScaleAggregation(nn.Module):
    """MSFA of E-CMCA: ``F_MSFA = Σ_k softmax_k(GAP(F_k) + GMP(F_k)) · F_k`` with ``F_k = Conv_k(F)``.

    ``GAP`` and ``GMP`` are taken over all channels and voxels, so each scale gets one scalar score per batch
    item; the softmax over the scales ``k`` gives one weight per scale.

    Args:
        channels: feature channels ``C`` (kept).
        kernel_sizes: the scales (paper: 3, 5, 7).
        depthwise: one filter per channel (``groups=C``) instead of a dense ``C → C`` convolution.
    """

    def __init__(self, channels: int, kernel_sizes: Sequence[int] = (3, 5, 7), depthwise: bool = True) -> None:
        super().__init__()
        groups = int(channels) if depthwise else 1
        self.convs = nn.ModuleList(nn.Conv3d(channels, channels, int(k), padding=int(k) // 2, groups=groups)
                                   for k in kernel_sizes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` → ``(B, C, D, H, W)``."""
        scaled = torch.stack([conv(features) for conv in self.convs], dim=1)  # (B, K, C, D, H, W)
        flat = scaled.flatten(2)
        weights = torch.softmax(flat.mean(dim=2) + flat.amax(dim=2), dim=1)  # (B, K)
        return torch.einsum("bk,bk...->b...", weights, scaled)


class DynamicChannelAttention(nn.Module):
    """DCA of E-CMCA: ``F_DCA = F · σ(Conv1D(GAP(F)))``, the Conv1D a kernel-1 bottleneck ``C → C/r → C``.

    The bottleneck's activation (unnamed in the paper) is the network's LeakyReLU: with few hidden units a
    ReLU can start dead and never train.

    Args:
        channels: feature channels ``C``.
        reduction: reduction ratio ``r`` (hidden width ``max(C // r, 1)``).
    """

    def __init__(self, channels: int, reduction: int = 2) -> None:
        super().__init__()
        hidden = max(int(channels) // int(reduction), 1)
        self.excite = nn.Sequential(nn.Conv1d(channels, hidden, 1), nn.LeakyReLU(NEGATIVE_SLOPE),
                                    nn.Conv1d(hidden, channels, 1), nn.Sigmoid())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` → ``(B, C, D, H, W)`` (each channel scaled by its weight in (0, 1))."""
        weights = self.excite(features.mean(dim=(2, 3, 4))[:, :, None])  # (B, C, 1)
        return features * weights[:, :, :, None, None]


class ECMCA(nn.Module):
    """Enhanced cross-modal channel attention: MSFA and DCA per modality, then the cross-modal gate.

    ``att = σ(W3ᵀ ReLU(W1ᵀ F_DCA,MRI + W2ᵀ F_DCA,TRUS + b12) + b3)`` is one spatial map ``(B, 1, D, H, W)``
    (``W1, W2``: ``C → C/2``, ``W3``: ``C/2 → 1``, 1×1×1 convolutions) and gates both modalities:
    ``F̂_i = att ⊙ F_DCA,i``. MSFA and DCA weights are shared by the modalities (module docstring).

    Args:
        channels: feature channels ``C`` of each modality.
        kernel_sizes: MSFA scales.
        depthwise_msfa: depthwise MSFA convolutions.
        reduction: DCA reduction ratio.
    """

    def __init__(self, channels: int, kernel_sizes: Sequence[int] = (3, 5, 7), depthwise_msfa: bool = True,
                 reduction: int = 2) -> None:
        super().__init__()
        hidden = max(int(channels) // 2, 1)
        self.msfa = MultiScaleAggregation(channels, kernel_sizes, depthwise_msfa)
        self.dca = DynamicChannelAttention(channels, reduction)
        self.w_mri = nn.Conv3d(channels, hidden, 1, bias=True)  # W1 and b12
        self.w_trus = nn.Conv3d(channels, hidden, 1, bias=False)  # W2
        self.gate = nn.Sequential(nn.ReLU(inplace=True), nn.Conv3d(hidden, 1, 1), nn.Sigmoid())  # σ2(W3ᵀ · + b3)

    def attention(self, mri_dca: torch.Tensor, trus_dca: torch.Tensor) -> torch.Tensor:
        """The gate ``att``, ``(B, 1, D, H, W)`` in (0, 1), from the DCA features of both modalities."""
        return self.gate(self.w_mri(mri_dca) + self.w_trus(trus_dca))

    def forward(self, mri: torch.Tensor, trus: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, D, H, W)`` MRI and TRUS features → their enhanced features ``(F̂_MRI, F̂_TRUS)``, same shape."""
        mri_dca, trus_dca = self.dca(self.msfa(mri)), self.dca(self.msfa(trus))
        att = self.attention(mri_dca, trus_dca)
        return att * mri_dca, att * trus_dca


class DepthSliceLSTM(nn.Module):
    """The LSTM spatial deformation module: depth slices of a field as a pseudo-temporal sequence.

    The field is average-pooled to ``T`` depth slabs × ``grid`` in-plane cells (:func:`depth_slice_pool`);
    slab ``t`` (``3·h·w`` values) is time step ``t`` of an LSTM; a fully connected layer maps each hidden
    state back to ``3·h·w`` values; the ``(3, T, h, w)`` result is upsampled trilinearly to the field's grid
    (slab centres on slab centres) and added to the field. The fully connected layer starts at zero.

    Args:
        slices: number of pseudo-temporal slices ``T`` (paper: 10).
        grid: in-plane cells ``(h, w)`` of each slice.
        hidden_size: LSTM hidden units (paper: 128).
        num_layers: LSTM layers (paper: 2).
    """

    def __init__(self, slices: int = 10, grid: Sequence[int] = (8, 8), hidden_size: int = 128,
                 num_layers: int = 2) -> None:
        super().__init__()
        self.slices, self.grid = int(slices), (int(grid[0]), int(grid[1]))
        step = 3 * self.grid[0] * self.grid[1]
        self.lstm = nn.LSTM(step, int(hidden_size), int(num_layers), batch_first=True)
        self.to_field = nn.Linear(int(hidden_size), step)
        nn.init.zeros_(self.to_field.weight)
        nn.init.zeros_(self.to_field.bias)

    def forward(self, field: torch.Tensor) -> torch.Tensor:
        """``(B, 3, D, H, W)`` field (voxels) → refined field, same shape and units."""
        batch = field.shape[0]
        coarse = depth_slice_pool(field, self.slices, self.grid)  # (B, 3, T, h, w)
        sequence = coarse.permute(0, 2, 1, 3, 4).reshape(batch, self.slices, -1)  # (B, T, 3·h·w)
        hidden, _ = self.lstm(sequence)
        correction = self.to_field(hidden).reshape(batch, self.slices, 3, *self.grid).permute(0, 2, 1, 3, 4)
        return field + F.interpolate(correction, size=field.shape[2:], mode="trilinear", align_corners=False)


class TaskMaskNet(nn.Module):
    """The dual-branch task-mask subnet: registration vs smoothing weights per pseudo-temporal slice.

    The decoder features are averaged over each of ``T`` depth slabs; each branch (registration, smoothing)
    is ``Linear(C, hidden) → ReLU → Linear(hidden, 1)``; a softmax over the two branch outputs gives
    ``M[n, t] = (m_reg, m_smooth)``, ``m_reg + m_smooth = 1``.

    Args:
        channels: decoder feature channels ``C``.
        slices: pseudo-temporal slices ``T``.
        hidden: hidden width of each branch (paper: 256).
    """

    def __init__(self, channels: int, slices: int = 10, hidden: int = 256) -> None:
        super().__init__()
        self.slices = int(slices)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1)) for _ in range(2))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` features → ``(B, 1, D, H, W)`` registration weight ``m_reg`` in [0, 1].

        Constant over each depth slab ``t`` (depths with ``floor(d·T/D) = t``); the smoothing weight is
        ``1 - m_reg``.
        """
        pooled = depth_slice_pool(features, self.slices)[..., 0, 0].transpose(1, 2)  # (B, T, C)
        logits = torch.cat([branch(pooled) for branch in self.branches], dim=-1)  # (B, T, 2)
        registration = torch.softmax(logits, dim=-1)[..., 0]  # (B, T)
        return F.interpolate(registration[:, None, :, None, None], size=features.shape[2:], mode="nearest")


class ECMCALSTM(nn.Module):
    """E-CMCA + LSTM registration network (seed 001): TRUS and MRI on one grid → diffeomorphic voxel DDF.

    Args:
        spatial_size: input grid ``(D, H, W)`` in voxels, each a multiple of 16.
        encoder_channels: ConvBlock channels of the four encoder levels (paper: 16, 32, 32, 32).
        decoder_channels: ConvBlock channels of the four decoder levels (paper: 32, 32, 32, 16).
        refine_channels: extra full-resolution ConvBlocks before the velocity head (paper: 32, 16, 16).
        kernel_sizes: MSFA scales of E-CMCA.
        depthwise_msfa: depthwise MSFA convolutions (dense in the text; see the module docstring).
        dca_reduction: reduction ratio of the DCA channel bottleneck.
        lstm_slices: pseudo-temporal depth slices ``T`` of the LSTM module and of the task mask (paper: 10).
        lstm_grid: in-plane cells ``(h, w)`` each slice is pooled to for the LSTM.
        lstm_hidden: LSTM hidden units (paper: 128).
        lstm_layers: LSTM layers (paper: 2).
        mask_hidden: hidden width of the task-mask branches (paper: 256).
        integration_steps: scaling-and-squaring steps of VecInt (paper: 7).
    """

    def __init__(self, spatial_size: Sequence[int], encoder_channels: Sequence[int] = (8, 16, 16, 16),
                 decoder_channels: Sequence[int] = (16, 16, 16, 8), refine_channels: Sequence[int] = (),
                 kernel_sizes: Sequence[int] = (3, 5, 7), depthwise_msfa: bool = True, dca_reduction: int = 2,
                 lstm_slices: int = 10, lstm_grid: Sequence[int] = (8, 8), lstm_hidden: int = 128,
                 lstm_layers: int = 2, mask_hidden: int = 256,
                 integration_steps: int = DEFAULT_INTEGRATION_STEPS) -> None:
        super().__init__()
        self.spatial_size = tuple(int(s) for s in spatial_size)
        if len(self.spatial_size) != 3 or any(s % GRID_MULTIPLE or s <= 0 for s in self.spatial_size):
            raise ValueError(f"spatial_size {list(spatial_size)} must be 3 positive sizes divisible by {GRID_MULTIPLE}")
        if len(encoder_channels) != 4 or len(decoder_channels) != 4:
            raise ValueError(f"encoder_channels and decoder_channels need 4 levels each, got {list(encoder_channels)} "
                             f"and {list(decoder_channels)}")
        encoder = [int(c) for c in encoder_channels]
        self.integration_steps = int(integration_steps)
        self.mri_encoder = self._encoder(encoder)
        self.trus_encoder = self._encoder(encoder)
        self.pool = nn.MaxPool3d(2)
        self.ecmca = nn.ModuleList(ECMCA(c, kernel_sizes, depthwise_msfa, dca_reduction) for c in encoder)
        self.fuse = nn.ModuleList(conv_block(2 * c, c, kernel_size=1) for c in encoder)
        skips = encoder[-2::-1] + [2]  # skip channels at /8, /4, /2 and the input pair at full resolution
        decoder, previous = [], encoder[-1]
        for skip, out in zip(skips, decoder_channels):
            decoder.append(conv_block(previous + skip, out))
            previous = int(out)
        self.decoder = nn.ModuleList(decoder)
        refine = []
        for out in refine_channels:
            refine.append(conv_block(previous, out))
            previous = int(out)
        self.refine = nn.Sequential(*refine)
        self.velocity_head = nn.Conv3d(previous, 3, kernel_size=3, padding=1)
        nn.init.zeros_(self.velocity_head.weight)
        nn.init.zeros_(self.velocity_head.bias)
        self.lstm = DepthSliceLSTM(lstm_slices, lstm_grid, lstm_hidden, lstm_layers)
        self.task_mask = TaskMaskNet(previous, lstm_slices, mask_hidden)

    @staticmethod
    def _encoder(channels: Sequence[int]) -> nn.ModuleList:
        return nn.ModuleList(conv_block(c_in, c_out) for c_in, c_out in zip([1, *channels[:-1]], channels))

    def _check(self, fixed: torch.Tensor, moving: torch.Tensor) -> None:
        expected = (1, *self.spatial_size)
        for name, image in (("fixed", fixed), ("moving", moving)):
            if image.dim() != 5 or tuple(image.shape[1:]) != expected:
                raise InputError(f"{name}: expected a (B, 1, D, H, W) = (B, {', '.join(map(str, expected))}) tensor, "
                                 f"got {tuple(image.shape)}")
        if fixed.shape[0] != moving.shape[0]:
            raise InputError(f"fixed and moving batch sizes differ: {fixed.shape[0]} and {moving.shape[0]}")

    def encode(self, fixed: torch.Tensor, moving: torch.Tensor) -> list[torch.Tensor]:
        """The fused skip features of the four levels, ``(B, C_l, D/2^(l+1), H/2^(l+1), W/2^(l+1))``.

        Per level: ConvBlock of each encoder, 2× max-pool, E-CMCA on the pooled pair, FuseConv of the
        enhanced pair; the encoders continue from their own pooled features. The last entry is the bottleneck.
        """
        skips, mri, trus = [], moving, fixed
        for mri_block, trus_block, ecmca, fuse in zip(self.mri_encoder, self.trus_encoder, self.ecmca, self.fuse):
            mri, trus = self.pool(mri_block(mri)), self.pool(trus_block(trus))
            skips.append(fuse(torch.cat(ecmca(mri, trus), dim=1)))
        return skips

    def decode(self, skips: list[torch.Tensor], fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """Decoder features ``(B, C, D, H, W)`` on the input grid from the skips (deepest last) and the inputs."""
        features = skips[-1]
        for block, skip in zip(self.decoder, [*skips[-2::-1], torch.cat([moving, fixed], dim=1)]):
            features = F.interpolate(features, scale_factor=2.0, mode="trilinear", align_corners=False)
            features = block(torch.cat([features, skip], dim=1))
        return self.refine(features)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            fixed: ``(B, 1, D, H, W)`` TRUS, z-scored.
            moving: ``(B, 1, D, H, W)`` MRI resampled (and pre-aligned) onto the TRUS grid, z-scored.

        Returns:
            ``"ddf"``: ``(B, 3, D, H, W)`` displacement in voxels of the grid, pull convention, channels along
            D, H, W (``spatial.warp(moving, ddf)`` is the warped MRI); ``"velocity"``: the stationary velocity
            field it integrates (same shape and units, after the LSTM module); ``"task_mask"``:
            ``(B, 1, D, H, W)`` registration weight in [0, 1] of each pseudo-temporal slice (smoothing weight
            ``1 - task_mask``).
        """
        self._check(fixed, moving)
        features = self.decode(self.encode(fixed, moving), fixed, moving)
        velocity = self.lstm(self.velocity_head(features))
        ddf = integrate_velocity(velocity, self.integration_steps)
        return {"ddf": ddf, "velocity": velocity, "task_mask": self.task_mask(features)}
