"""Dual intra-modal similarity loss (seed 003): train an inter-modality network with same-modality metrics.

Seed 003 registers a moving image of modality B onto a fixed image of modality A without a cross-modal
metric: in training every input has a *paired* image of the other modality, accurately aligned to it, and
the dissimilarity is measured within each modality (Eq. 2):

``L = ½ L_S^A(I_A, T(φ, I_A^paired)) + ½ L_S^B(I_B^paired, T(φ, I_B)) + L_R(φ)``

Here A = TRUS (fixed) and B = MRI (moving), so the batch needs, besides ``"fixed_image"`` and
``"moving_image"`` (``(B, 1, D, H, W)`` on the fixed grid, the MRI pre-aligned), two extra keys:

* ``"moving_modality_in_fixed_space"`` (:data:`MOVING_MODALITY_IN_FIXED_SPACE`): ``(B, 1, D, H, W)``, an
  MRI of the same anatomy *accurately* aligned to the fixed TRUS (seed 003's "paired-MR" of the input CT);
  compared with the warped moving MRI ``T(φ, I_MRI)``.
* ``"fixed_modality_in_moving_space"`` (:data:`FIXED_MODALITY_IN_MOVING_SPACE`): ``(B, 1, D, H, W)``, a TRUS
  image accurately aligned to the moving MRI — voxel ``p`` shows the anatomy of ``moving_image[p]`` (seed
  003's "paired-CT" of the input MR); warped by the same ``φ`` and compared with the fixed TRUS.

A pipeline with an accurately registered MRI–TRUS pair ``(F, M_F)`` (e.g. label-driven registration) and a
random deformation ``ψ`` (voxel DDF on the grid) provides them as ``moving_image = warp(M_F, ψ)``,
``fixed_modality_in_moving_space = warp(F, ψ)``, ``moving_modality_in_fixed_space = M_F`` and
``fixed_image = F``. Only training needs them; the network itself sees the fixed and moving images alone.

Terms (``φ = outputs["ddf"]``, voxels, pull convention of :mod:`..registration.learned.spatial`):

* ``L_S = 1 - NCC`` (Eq. 3): by default the global normalised cross-correlation of each batch item,
  ``NCC = <I - Ī, I' - Ī'> / (||I - Ī||₂ ||I' - Ī'||₂)``, averaged over the batch (the seed computes it over
  its output patch); with ``kernel_size`` the local version of MONAI ``LocalNormalizedCrossCorrelationLoss``
  (a ``kernel_size``³ box window; MONAI averages the *squared* local NCC, so ``L_S = 1 - mean(NCC²)``).
* ``L_R = λ1·||∇²φ||² + λ2·||φ||²`` (Eq. 4, ``λ1 = 0.5``, ``λ2 = 0.01``): ``∇²`` the vector Laplacian
  (7-point: ``[1, -2, 1]`` per axis, MONAI's stencil, interior voxels), the squared norms averaged over
  voxels (summed over the 3 components), in voxel units.

The seed's single-modality ablations are ``fixed_modality_weight=1, moving_modality_weight=0`` and the
reverse (the ½ dropped).
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from monai.losses import LocalNormalizedCrossCorrelationLoss
from monai.losses.deform import spatial_gradient_squared
from torch import nn

from ..errors import InputError
from ..registration.learned.spatial import warp

#: Batch key: the moving modality (MRI) accurately aligned to the fixed image, on the fixed grid.
MOVING_MODALITY_IN_FIXED_SPACE = "moving_modality_in_fixed_space"
#: Batch key: the fixed modality (TRUS) accurately aligned to the moving image, on the moving image's tensor grid.
FIXED_MODALITY_IN_MOVING_SPACE = "fixed_modality_in_moving_space"
#: Keeps the NCC of a constant image finite (it is 0 then); negligible against z-scored images.
NCC_SMOOTH = 1e-5


def global_ncc(image: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Eq. 3's normalised cross-correlation of each item of two ``(B, C, D, H, W)`` images: ``(B,)`` in [-1, 1]."""
    a = image.flatten(1) - image.flatten(1).mean(dim=1, keepdim=True)
    b = other.flatten(1) - other.flatten(1).mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / torch.sqrt((a * a).sum(dim=1) * (b * b).sum(dim=1) + NCC_SMOOTH ** 2)


def vector_laplacian(field: torch.Tensor) -> torch.Tensor:
    """``∇²φ`` of a ``(B, 3, D, H, W)`` field on its interior voxels, ``(B, 3, D-2, H-2, W-2)`` (voxel units)."""
    return sum(spatial_gradient_squared(field, axis, axis) for axis in range(2, field.dim()))


class DualIntraModalLoss(nn.Module):
    """Seed 003's loss: intra-modal dissimilarity on both modalities, weighted ½ each, plus ``L_R``.

    Args:
        fixed_modality_weight: weight of ``L_S`` on the fixed modality (TRUS vs warped paired TRUS); ½.
        moving_modality_weight: weight of ``L_S`` on the moving modality (paired MRI vs warped MRI); ½.
        laplacian_weight: ``λ1`` of ``||∇²φ||²`` (seed: 0.5).
        displacement_weight: ``λ2`` of ``||φ||²`` (seed: 0.01).
        kernel_size: ``None`` for the global NCC of Eq. 3, else the window of MONAI's local NCC.
    """

    def __init__(self, fixed_modality_weight: float = 0.5, moving_modality_weight: float = 0.5,
                 laplacian_weight: float = 0.5, displacement_weight: float = 0.01,
                 kernel_size: Optional[int] = None) -> None:
        super().__init__()
        self.fixed_modality_weight = float(fixed_modality_weight)
        self.moving_modality_weight = float(moving_modality_weight)
        self.laplacian_weight, self.displacement_weight = float(laplacian_weight), float(displacement_weight)
        self.local_ncc = (None if kernel_size is None else
                          LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=int(kernel_size)))

    def dissimilarity(self, image: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        """``L_S = 1 - NCC`` (global, or ``1 - mean(local NCC²)``), a scalar averaged over the batch."""
        if self.local_ncc is None:
            return (1.0 - global_ncc(image, warped)).mean()
        return 1.0 + self.local_ncc(warped, image)

    def forward(self, outputs: Mapping[str, torch.Tensor],
                batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """
        Args:
            outputs: ``"ddf"`` ``(B, 3, D, H, W)`` (voxels, pull, on the fixed grid).
            batch: ``"fixed_image"``, ``"moving_image"`` and the two paired images (module docstring), all
                ``(B, 1, D, H, W)``.

        Returns:
            ``"total"`` and the unweighted terms ``"similarity_fixed_modality"``,
            ``"similarity_moving_modality"``, ``"laplacian"``, ``"displacement"``; scalars.
        """
        missing = [key for key in (MOVING_MODALITY_IN_FIXED_SPACE, FIXED_MODALITY_IN_MOVING_SPACE) if key not in batch]
        if missing:
            raise InputError(f"DualIntraModalLoss needs the paired images {missing} in the batch (seed 003)")
        ddf = outputs["ddf"]
        terms = {
            "similarity_fixed_modality": self.dissimilarity(batch["fixed_image"],
                                                            warp(batch[FIXED_MODALITY_IN_MOVING_SPACE], ddf)),
            "similarity_moving_modality": self.dissimilarity(batch[MOVING_MODALITY_IN_FIXED_SPACE],
                                                             warp(batch["moving_image"], ddf)),
            "laplacian": vector_laplacian(ddf).pow(2).sum(dim=1).mean(),
            "displacement": ddf.pow(2).sum(dim=1).mean(),
        }
        total = (self.fixed_modality_weight * terms["similarity_fixed_modality"]
                 + self.moving_modality_weight * terms["similarity_moving_modality"]
                 + self.laplacian_weight * terms["laplacian"] + self.displacement_weight * terms["displacement"])
        return {"total": total, **terms}
