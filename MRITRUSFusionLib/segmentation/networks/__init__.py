"""Segmentation network builders, one network per module."""

from .trus_unet import build_trus_unet

__all__ = ["build_trus_unet"]
