"""CSAD losses (seed 004, §III-A2 and §III-C): ``L_total = L_Dice + β·L_WBCE + α·L_CSAD``.

* ``L_AD`` (Eq. 4), the symmetric KL divergence of two attention maps ``a``, ``b`` (each a distribution
  over the ``W·H`` pixels, or ``D·W·H`` voxels in 3D: the spatial softmax of the AMGB, see
  :func:`MRITRUSFusionLib.segmentation.networks.csad.log_attention_map`), taken pixel-wise and averaged:
  ``L_AD = 1/(2WH) Σ_ij [a_ij log(a_ij/b_ij) + b_ij log(b_ij/a_ij)]``
  ``= 1/(2WH) Σ_ij (a_ij - b_ij)(log a_ij - log b_ij)``.
  Both maps receive gradients (the divergence is symmetric: neither is a fixed teacher). Averaged over the
  batch. ``α`` (paper: 1) weights the term.
* ``L_CSAD`` (Eq. 3), interlaced across modalities over consecutive layers, ``m = 1 .. N-1``:
  ``Σ_m L_AD(A_m^T2W, A_{m+1}^ADC) + L_AD(A_m^ADC, A_{m+1}^T2W)``.
* ``L_WBCE`` (Eq. 11), mean over pixels of ``-λ p log p̂ - (1-λ)(1-p) log(1-p̂)`` (paper: ``λ = 0.95``).
* ``L_Dice`` (Eq. 10), ``1 - (2|X∩Y| + σ)/(|X| + |Y| + σ)`` on the sigmoid tumour probability, per sample
  and averaged (``monai.losses.DiceLoss``; paper: ``σ = 1``).

The tumour logit is the network's single output channel, or ``l_1 - l_0`` for (background, tumour)
logits, since ``softmax(l)_1 = sigmoid(l_1 - l_0)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from ..errors import InputError


def symmetric_kl_attention(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """``L_AD`` of Eq. 4.

    Args:
        log_a: ``log a``, ``(B, 1, *S)`` log attention map (``exp`` sums to 1 over ``S`` per sample).
        log_b: ``log b``, same shape.

    Returns:
        Scalar: the batch mean of ``1/(2|S|) Σ_S (a - b)(log a - log b)`` (nats).
    """
    if log_a.shape != log_b.shape:
        raise InputError(f"attention distillation: maps of different shapes {tuple(log_a.shape)} and "
                         f"{tuple(log_b.shape)}")
    per_voxel = (log_a.exp() - log_b.exp()) * (log_a - log_b)
    return per_voxel.mean() / 2


def interlaced_csad(log_attention_t2w: Sequence[torch.Tensor],
                    log_attention_adc: Sequence[torch.Tensor]) -> torch.Tensor:
    """``L_CSAD`` of Eq. 3: ``Σ_{m=1}^{N-1} L_AD(A_m^T2W, A_{m+1}^ADC) + L_AD(A_m^ADC, A_{m+1}^T2W)``.

    Args:
        log_attention_t2w: the ``N`` log attention maps of the T2W stream, shallowest first, each
            ``(B, 1, *S)``.
        log_attention_adc: the ``N`` maps of the ADC stream.

    Returns:
        Scalar (nats), the sum of ``2(N - 1)`` terms.
    """
    if len(log_attention_t2w) != len(log_attention_adc) or len(log_attention_t2w) < 2:
        raise InputError(f"attention distillation: need the same number (>= 2) of T2W and ADC maps, got "
                         f"{len(log_attention_t2w)} and {len(log_attention_adc)}")
    shallow = zip(log_attention_t2w[:-1], log_attention_adc[:-1], log_attention_t2w[1:], log_attention_adc[1:])
    return sum(symmetric_kl_attention(t2w_m, adc_next) + symmetric_kl_attention(adc_m, t2w_next)
               for t2w_m, adc_m, t2w_next, adc_next in shallow)


def weighted_bce_with_logits(logits: torch.Tensor, target: torch.Tensor, lam: float = 0.95) -> torch.Tensor:
    """``L_WBCE`` of Eq. 11 from logits (``p̂ = sigmoid(logits)``, computed with ``logsigmoid``).

    Args:
        logits: ``(B, 1, *S)`` tumour logits.
        target: ``p``, ``(B, 1, *S)`` labels in [0, 1].
        lam: ``λ``, weight of the tumour (positive) term; ``1 - λ`` weights the background term.

    Returns:
        Scalar: mean over all pixels of ``-λ p log p̂ - (1-λ)(1-p) log(1-p̂)`` (nats).
    """
    target = target.to(logits.dtype)
    per_pixel = -lam * target * F.logsigmoid(logits) - (1 - lam) * (1 - target) * F.logsigmoid(-logits)
    return per_pixel.mean()


def tumour_logit(logits: torch.Tensor) -> torch.Tensor:
    """``(B, 1, *S)`` tumour logit from ``(B, 1, *S)`` logits or ``(B, 2, *S)`` (background, tumour) logits."""
    if logits.shape[1] == 1:
        return logits
    if logits.shape[1] == 2:
        return logits[:, 1:] - logits[:, :1]
    raise InputError(f"CSAD loss: expected 1 or 2 logit channels, got {logits.shape[1]}")


class CSADLoss(nn.Module):
    """``total = L_Dice + bce_weight·L_WBCE + alpha·L_CSAD`` (Eq. 8–9).

    Args:
        alpha: ``α``, weight of the distillation term (paper: 1).
        bce_weight: ``β``, weight of the weighted BCE (paper: 0.1).
        bce_lambda: ``λ`` of the weighted BCE (paper: 0.95).
        smooth: ``σ`` of the Dice loss, numerator and denominator (paper: 1).
    """

    def __init__(self, alpha: float = 1.0, bce_weight: float = 0.1, bce_lambda: float = 0.95,
                 smooth: float = 1.0) -> None:
        super().__init__()
        self.alpha, self.bce_weight, self.bce_lambda = float(alpha), float(bce_weight), float(bce_lambda)
        self.dice = DiceLoss(sigmoid=True, smooth_nr=float(smooth), smooth_dr=float(smooth))

    def forward(self, outputs: dict, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            outputs: :class:`~MRITRUSFusionLib.segmentation.networks.csad.CSADNet` outputs: ``"logits"``
                ``(B, 1 or 2, *S)``, ``"log_attention_t2w"`` and ``"log_attention_adc"`` (lists of
                ``(B, 1, *S)``; the distillation term is 0 when either is empty, e.g. without ADC).
            target: ``(B, 1, *S)`` binary tumour mask.

        Returns:
            ``"total"`` and the unweighted terms ``"dice"``, ``"wbce"``, ``"csad"`` (scalars).
        """
        logit = tumour_logit(outputs["logits"])
        if target.shape != logit.shape:
            raise InputError(f"CSAD loss: target {tuple(target.shape)} does not match the tumour logit "
                             f"{tuple(logit.shape)}")
        target = target.to(logit.dtype)
        terms = {"dice": self.dice(logit, target),
                 "wbce": weighted_bce_with_logits(logit, target, self.bce_lambda)}
        t2w_maps, adc_maps = outputs.get("log_attention_t2w", []), outputs.get("log_attention_adc", [])
        terms["csad"] = interlaced_csad(t2w_maps, adc_maps) if t2w_maps and adc_maps else logit.new_zeros(())
        terms["total"] = terms["dice"] + self.bce_weight * terms["wbce"] + self.alpha * terms["csad"]
        return terms
