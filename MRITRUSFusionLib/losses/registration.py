"""Registration loss terms by name, and their weighted sum, for any learned registration network.

Every term is a module ``term(outputs, batch)`` (see :mod:`MRITRUSFusionLib.registration.learned.spatial` for
the DDF convention) returning a scalar tensor or a dict with ``"total"``. MONAI losses become terms through
two adapters: :class:`WarpedImageTerm` compares the warped MRI with the TRUS, :class:`FieldTerm` regularises
the DDF. The seed papers' losses (weighted Dice + KL of seed 000, the task-mask loss of seed 001, the dual
intra-modal loss of seed 003) are terms too, so a config can combine them, e.g. seed 003's loss as an
option of any deformable model.

``batch`` keys: ``fixed_image``/``moving_image`` (B, 1, D, H, W) and ``fixed_label``/``moving_label``
(B, L, D, H, W) in {0, 1} (channel 0 gland, 1.. landmarks, empty channels are padding).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping, Sequence

import torch
from monai.losses import (BendingEnergyLoss, DiffusionLoss, GlobalMutualInformationLoss,
                          LocalNormalizedCrossCorrelationLoss)
from torch import nn

from ..errors import InputError
from ..registration.learned.spatial import warp

# MONAI's bending/diffusion losses index tensors with lists, which torch >= 2.8 warns about at every call.
warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing",
                        category=UserWarning, module="monai.losses.deform")


class WarpedImageTerm(nn.Module):
    """``loss(warp(moving_image, ddf), fixed_image)`` for a MONAI image-similarity loss."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.loss(warp(batch["moving_image"], outputs["ddf"], padding_mode="border"), batch["fixed_image"])


class FieldTerm(nn.Module):
    """``loss(ddf)`` for a MONAI displacement-field regulariser."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.loss(outputs["ddf"])


def _weighted_dice(**arguments: Any) -> nn.Module:
    from .weighted_dice import WeightedDiceLoss
    return WeightedDiceLoss(**arguments)


def _vit_affine(**arguments: Any) -> nn.Module:
    from .vit_affine import ViTAffineLoss
    return ViTAffineLoss(**arguments)


def _ecmca(**arguments: Any) -> nn.Module:
    from .ecmca import ECMCALoss
    return ECMCALoss(**arguments)


def _intra_modal(**arguments: Any) -> nn.Module:
    from .intra_modal import DualIntraModalLoss
    return DualIntraModalLoss(**arguments)


#: Term name -> factory taking the term's ``arguments``.
REGISTRATION_TERMS: dict[str, Callable[..., nn.Module]] = {
    "mi": lambda **a: WarpedImageTerm(GlobalMutualInformationLoss(**a)),
    "lncc": lambda **a: WarpedImageTerm(LocalNormalizedCrossCorrelationLoss(**{"spatial_dims": 3, **a})),
    "bending": lambda **a: FieldTerm(BendingEnergyLoss(**a)),
    "gradient": lambda **a: FieldTerm(DiffusionLoss(**a)),
    "weighted-dice": _weighted_dice,
    "vit-affine": _vit_affine,
    "ecmca": _ecmca,
    "intra-modal": _intra_modal,
}


class WeightedTerms(nn.Module):
    """``sum_i weight_i * term_i(outputs, batch)``; :meth:`forward` returns ``"total"`` and every term."""

    def __init__(self, terms: Sequence[tuple[str, float, nn.Module]]) -> None:
        super().__init__()
        self.names = [name for name, _, _ in terms]
        self.weights = [float(weight) for _, weight, _ in terms]
        self.terms = nn.ModuleList([term for _, _, term in terms])

    def forward(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        values = {}
        total = 0.0
        for name, weight, term in zip(self.names, self.weights, self.terms):
            value = term(outputs, batch)
            value = value["total"] if isinstance(value, Mapping) else value
            values[name] = value.detach()
            total = total + weight * value
        return {"total": total, **values}


def build_registration_loss(terms: Sequence[Mapping[str, Any]],
                            table: Mapping[str, Callable[..., nn.Module]] = REGISTRATION_TERMS) -> WeightedTerms:
    """The weighted sum of ``terms`` (``{"name", "weight", "arguments"}`` each, as in a training config).

    ``table`` maps term names to factories: :data:`REGISTRATION_TERMS` by default; joint registration and
    segmentation models add their segmentation terms (:mod:`MRITRUSFusionLib.training.fusion_tasks`).

    Raises:
        InputError: no term, an unknown term name, or arguments the term does not take (naming the key).
    """
    if not terms:
        raise InputError(f"config key 'loss.terms': a model trained with terms needs at least one; "
                         f"available: {', '.join(table)}")
    built = []
    for index, term in enumerate(terms):
        name = term["name"]
        if name not in table:
            raise InputError(f"config key 'loss.terms[{index}].name': unknown term '{name}'; available: "
                             f"{', '.join(table)}")
        try:
            module = table[name](**dict(term.get("arguments") or {}))
        except (TypeError, ValueError) as error:
            raise InputError(f"config key 'loss.terms[{index}].arguments': {error}") from None
        built.append((name, float(term.get("weight", 1.0)), module))
    return WeightedTerms(built)
