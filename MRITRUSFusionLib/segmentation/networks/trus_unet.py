"""The ``trus-unet`` network: a small 3D MONAI UNet mapping one TRUS channel (or, for ``concat``, the TRUS and
the MRI resampled onto it) to background/target logits."""

from __future__ import annotations

from typing import Sequence

from monai.networks.nets import UNet

#: Input channels (the z-scored TRUS) and output channels (background, tumour logits).
IN_CHANNELS, OUT_CHANNELS = 1, 2


def build_trus_unet(channels: Sequence[int] = (8, 16, 32, 64), strides: Sequence[int] = (2, 2, 2),
                    num_res_units: int = 1, dropout: float = 0.0, norm: str = "instance",
                    in_channels: int = IN_CHANNELS) -> UNet:
    """A 3D ``monai.networks.nets.UNet`` with ``in_channels`` inputs (default 1) and 2 output channels.

    Args:
        channels: feature channels per resolution level, coarsest last; one more entry than ``strides``.
        strides: downsampling factor (voxels) between consecutive levels. With the defaults a patch side
            must be a multiple of 8 voxels.
        num_res_units: residual units per level (0 = plain convolutions).
        dropout: dropout probability inside every convolution block.
        norm: normalisation layer name understood by MONAI (``instance``, ``batch``, ``group``...).
        in_channels: stacked input images (``concat``: the TRUS and the MRI resampled onto it).

    Returns:
        An untrained network; the output has the input's spatial size and 2 channels (logits).
    """
    return UNet(spatial_dims=3, in_channels=int(in_channels), out_channels=OUT_CHANNELS, channels=tuple(channels),
                strides=tuple(strides), num_res_units=int(num_res_units), dropout=float(dropout), norm=norm)
