"""Inference view of a multi-input network: one channel-stacked tensor in, logits out.

Sliding-window inference (:mod:`MRITRUSFusionLib.segmentation.inference`) feeds a network one tensor whose
channels are the model's input roles in order and expects logits back. Networks with one argument per
modality that return a dict of outputs (``RegEnhancedUNet(trus, mri)``, ``CSADNet(t2w, adc=None)``) are
trained as they are (the losses need the whole dict) and wrapped by :class:`StackedInputs` for inference.
"""

from __future__ import annotations

import torch
from torch import nn


class StackedInputs(nn.Module):
    """``image (B, C, *S)`` → ``network(image[:, 0:1], ..., image[:, C-1:C])["logits"]``.

    Each channel becomes one positional argument, so a network with optional trailing inputs (the ADC of
    ``CSADNet``) runs on fewer channels. The wrapped network keeps its parameters and mode (``eval`` of
    the wrapper is ``eval`` of the network).

    Args:
        network: a module taking one ``(B, 1, *S)`` tensor per input and returning ``{"logits": ...}``.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` channel-stacked inputs → ``(B, K, *S)`` logits."""
        return self.network(*image.split(1, dim=1))["logits"]
