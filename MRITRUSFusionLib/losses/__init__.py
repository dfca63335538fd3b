"""Training losses, one family per file (as ``monai.losses``): import them from their submodules.

Registration losses take the network outputs (``ddf`` in voxels on the fixed grid, see
:mod:`MRITRUSFusionLib.registration.learned.spatial`) and the batch; segmentation losses take logits and
labels. Terms that MONAI already provides (Dice, Focal, mutual information, bending/diffusion energy) are
used from MONAI, not rewritten.
"""
