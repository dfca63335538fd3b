"""ViT affine registration branch of seed 000 (registration-enhanced TRUS tumour segmentation), from the text.

Structure (paper §3.2, steps 1–6 and 10 of Fig. 2, Eq. 1–5 and the KL paragraph of §3.3):

* **modality feature extractors** (separate weights for TRUS and MRI, Eq. 1): two convolutions, each followed
  by an activation, the first with stride 2, so ``T_fea`` and ``M_fea`` are on the half-resolution grid;
* **pooled residual** (Eq. 2): ``T_merge = AvgPool(T_init) + T_fea`` (same for the MRI), a 2× average pool
  of the image added to every feature channel;
* **patch split / merge and Transformer encoder** (Eq. 3): both merged maps are cut into non-overlapping
  ``k³`` patches, the two patch vectors of each location are concatenated (TRUS first, ``S(T, M)``) and a
  linear layer with a learnable positional embedding maps them to ``Z_0`` (N tokens of width C). A
  convolution with kernel = stride = ``k`` on the channel-concatenated maps is exactly that linear map of
  each location's two patches: ``monai.networks.blocks.PatchEmbeddingBlock`` with ``proj_type="conv"``
  (its ``"perceptron"`` variant and MONAI's ``TransformerBlock`` need ``einops``, not a dependency here).
  Then ``n`` pre-norm Transformer blocks (MSA, then a 2-layer GELU MLP, each with a residual):
  ``torch.nn.TransformerEncoderLayer(norm_first=True, activation="gelu")``;
* **affine head**: ``A = MLP(LN(Z_n))``, a ``3 × 4`` matrix. The paper does not say how the N tokens are
  reduced to one matrix; here the normalised tokens are averaged, then a 2-layer GELU MLP gives 12 numbers.
  The last layer starts at zero weights and an identity bias, so the untrained network returns the
  identity exactly (upstream layers then get gradients from the second optimiser step on);
* **alignment** (Eq. 4–5): ``A`` warps ``M_merge`` (half grid) and ``M_init`` (full grid);
* **feature distributions** (step 10, KL paragraph): a small CNN (shared by both modalities, so the same map
  turns features into distributions) gives one score per voxel of the half grid; a softmax over the ``d``
  voxels makes ``T_dis`` and ``M̂_dis`` (returned as log-probabilities for a stable KL). The distributions
  are spatial, so they depend on the alignment, which is why the paper applies ``A`` before the KL term.
  As in the paper, the head is trained by the KL term too, so it can lower the term by flattening both
  distributions (a constant score gives the uniform distribution and zero KL); the Dice term does not.

**Conventions** (see :mod:`.spatial`): inputs ``(B, 1, D, H, W)`` on the fixed (TRUS) grid, the MRI already
resampled onto it; ``theta`` is in the normalised coordinates of ``torch.nn.functional.affine_grid``
(``align_corners=True``; x = W, y = H, z = D) and maps fixed positions to moving sampling positions; ``ddf``
is the same map as a pulled voxel DDF, so ``spatial.warp(moving, ddf)`` is the aligned MRI. The feature maps
are warped by the *same physical* map: ``theta`` is re-expressed in the half grid's normalised coordinates
(:func:`half_grid_theta`), not reused as is (the half grid's extreme voxel centres are not at ±1 of the
full grid).

Choices where the paper gives no value (all arguments): feature width ``feature_channels = 1`` (the paper's
patch matrix is ``N × k³`` per modality, i.e. one channel), hidden width of the extractors, patch size
``k = 4``, token width, depth and heads of the encoder (small, CPU-friendly defaults), LeakyReLU activations.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, PatchEmbeddingBlock
from torch import nn

from ...errors import InputError
from .spatial import normalized_to_voxel_ddf, warp

#: Every side of the input grid must be a multiple of this (stride-2 features, then patches).
SIZE_MULTIPLE = 16
#: The identity in ``affine_grid``'s ``(3, 4)`` layout.
IDENTITY_THETA = torch.eye(3, 4)
_ACT = ("leakyrelu", {"negative_slope": 0.2})


def theta_to_ddf(theta: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The voxel DDF (pull, channels D, H, W) of the affine ``theta`` on a grid of ``shape``.

    ``affine_grid`` is linear in ``theta``, so ``affine_grid(theta - I)`` is the displacement of every voxel
    in normalised units, exactly zero for the identity.

    Args:
        theta: ``(B, 3, 4)`` affine in ``affine_grid`` normalised coordinates (``align_corners=True``).
        shape: ``(D, H, W)`` of the grid.

    Returns:
        ``(B, 3, D, H, W)`` displacement in voxels of that grid; ``spatial.warp(m, ddf)`` equals
        ``grid_sample(m, affine_grid(theta), align_corners=True)``.
    """
    offset = theta - IDENTITY_THETA.to(theta)
    grid = F.affine_grid(offset, [theta.shape[0], 1, *shape], align_corners=True)  # (B, D, H, W, 3[x, y, z])
    return normalized_to_voxel_ddf(grid.permute(0, 4, 1, 2, 3))


def half_grid_theta(theta: torch.Tensor, full_shape: Sequence[int]) -> torch.Tensor:
    """``theta`` (normalised coordinates of the full grid) re-expressed on the 2× average-pooled grid.

    Half-grid voxel ``j`` is centred at full-grid voxel ``2j + 0.5``, so a half-grid normalised coordinate
    ``u`` is the full-grid coordinate ``s·u`` with ``s = (S - 2) / (S - 1)`` per axis. The same physical map is
    then ``diag(1/s) · A · diag(s)`` and ``t / s``.

    Args:
        theta: ``(B, 3, 4)``, columns/rows in order x = W, y = H, z = D.
        full_shape: ``(D, H, W)`` of the full grid (even sides).
    """
    sizes = torch.tensor([full_shape[2], full_shape[1], full_shape[0]], dtype=theta.dtype, device=theta.device)
    scale = (sizes - 2) / (sizes - 1)
    matrix = theta[:, :, :3] * scale[None, None, :] / scale[None, :, None]
    return torch.cat([matrix, theta[:, :, 3:] / scale[None, :, None]], dim=2)


class MergedFeatures(nn.Module):
    """One modality's extractor and pooled residual (Eq. 1–2): ``AvgPool(x) + Conv2(Conv1(x))``.

    Args:
        hidden_channels: output channels of the first (stride-2) convolution.
        feature_channels: output channels ``F`` of the second convolution (the merged map's width).
    """

    def __init__(self, hidden_channels: int, feature_channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            Convolution(3, 1, hidden_channels, strides=2, kernel_size=3, act=_ACT, norm=None),
            Convolution(3, hidden_channels, feature_channels, kernel_size=3, act=_ACT, norm=None))
        self.pool = nn.AvgPool3d(kernel_size=2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, D, H, W)`` image → ``(B, F, D/2, H/2, W/2)`` merged features (image pool broadcast over F)."""
        return self.pool(image) + self.convs(image)


class DistributionHead(nn.Module):
    """CNN + softmax of the KL term: features → a probability distribution over the ``d`` voxels of their grid.

    Args:
        feature_channels: ``F`` of the input features.
        hidden_channels: channels of the 3×3×3 convolution before the 1×1×1 scoring convolution.
    """

    def __init__(self, feature_channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.score = nn.Sequential(Convolution(3, feature_channels, hidden_channels, kernel_size=3, act=_ACT,
                                               norm=None),
                                   nn.Conv3d(hidden_channels, 1, kernel_size=1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, F, d1, d2, d3)`` → ``(B, d)`` log-probabilities (``d = d1·d2·d3``, log-softmax over voxels)."""
        return torch.log_softmax(self.score(features).flatten(1), dim=1)


class ViTAffine(nn.Module):
    """Seed 000's registration branch: TRUS (fixed) and MRI (moving) → affine, aligned MRI and features.

    Args:
        spatial_size: ``(D, H, W)`` of the input grid, each a multiple of 16 and of ``2 * patch_size``.
        feature_channels: ``F``, width of the merged feature maps (paper: 1).
        hidden_channels: channels of the first convolution of each modality extractor.
        patch_size: side ``k`` of the cubic patches on the half grid.
        hidden_size: token width ``C`` of the Transformer encoder.
        num_layers: number ``n`` of Transformer blocks.
        num_heads: attention heads (must divide ``hidden_size``).
        mlp_dim: hidden width of each block's GELU MLP.
        dropout_rate: dropout in the patch embedding and the Transformer blocks.
        distribution_channels: hidden channels of the KL term's distribution CNN.
    """

    def __init__(self, spatial_size: Sequence[int], feature_channels: int = 1, hidden_channels: int = 8,
                 patch_size: int = 4, hidden_size: int = 96, num_layers: int = 4, num_heads: int = 4,
                 mlp_dim: int = 384, dropout_rate: float = 0.0, distribution_channels: int = 8) -> None:
        super().__init__()
        self.spatial_size = tuple(int(s) for s in spatial_size)
        if len(self.spatial_size) != 3 or any(s % SIZE_MULTIPLE or s % (2 * patch_size) for s in self.spatial_size):
            raise ValueError(f"spatial_size must be 3 sides, each a multiple of {SIZE_MULTIPLE} and of "
                             f"2 * patch_size = {2 * patch_size}; got {spatial_size}")
        self.feature_channels = int(feature_channels)
        self.fixed_features = MergedFeatures(hidden_channels, feature_channels)
        self.moving_features = MergedFeatures(hidden_channels, feature_channels)
        self.embedding = PatchEmbeddingBlock(in_channels=2 * feature_channels,
                                             img_size=[s // 2 for s in self.spatial_size], patch_size=patch_size,
                                             hidden_size=hidden_size, num_heads=num_heads, proj_type="conv",
                                             pos_embed_type="learnable", dropout_rate=dropout_rate)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(hidden_size, num_heads, mlp_dim, dropout_rate, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_size)
        self.head = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, 12))
        nn.init.zeros_(self.head[-1].weight)
        with torch.no_grad():
            self.head[-1].bias.copy_(IDENTITY_THETA.flatten())
        self.distribution = DistributionHead(feature_channels, distribution_channels)

    def _check(self, fixed: torch.Tensor, moving: torch.Tensor) -> None:
        expected = (1, *self.spatial_size)
        for name, image in (("fixed", fixed), ("moving", moving)):
            if image.dim() != 5 or tuple(image.shape[1:]) != expected:
                raise InputError(f"{name}: expected (B, {', '.join(map(str, expected))}), got {tuple(image.shape)}")
        if fixed.shape[0] != moving.shape[0]:
            raise InputError(f"fixed and moving batch sizes differ: {fixed.shape[0]} and {moving.shape[0]}")

    def affine(self, fixed_merge: torch.Tensor, moving_merge: torch.Tensor) -> torch.Tensor:
        """Eq. 3: merged features ``(B, F, D/2, H/2, W/2)`` each → ``(B, 3, 4)`` theta (fixed → moving)."""
        tokens = self.embedding(torch.cat([fixed_merge, moving_merge], dim=1))  # (B, N, C)
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens).mean(dim=1)).view(-1, 3, 4)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            fixed: ``(B, 1, D, H, W)`` z-scored TRUS.
            moving: ``(B, 1, D, H, W)`` z-scored MRI resampled onto the TRUS grid.

        Returns:
            ``"ddf"`` ``(B, 3, D, H, W)`` voxel DDF (pull, fixed grid); ``"theta"`` ``(B, 3, 4)``;
            ``"warped_moving"`` ``(B, 1, D, H, W)`` = ``M̂_init``; ``"fixed_features"`` ``T_merge`` and
            ``"moving_features"`` ``M̂_merge`` (aligned), both ``(B, F, D/2, H/2, W/2)``;
            ``"fixed_log_distribution"`` and ``"moving_log_distribution"`` ``(B, d)``, ``d = D·H·W / 8``:
            log ``T_dis`` and log ``M̂_dis`` of the KL term.
        """
        self._check(fixed, moving)
        fixed_merge = self.fixed_features(fixed)
        moving_merge = self.moving_features(moving)
        theta = self.affine(fixed_merge, moving_merge)
        ddf = theta_to_ddf(theta, self.spatial_size)
        feature_ddf = theta_to_ddf(half_grid_theta(theta, self.spatial_size), fixed_merge.shape[2:])
        moving_aligned = warp(moving_merge, feature_ddf)
        return {"ddf": ddf, "theta": theta, "warped_moving": warp(moving, ddf),
                "fixed_features": fixed_merge, "moving_features": moving_aligned,
                "fixed_log_distribution": self.distribution(fixed_merge),
                "moving_log_distribution": self.distribution(moving_aligned)}
