"""MRITRUSFusionLib: headless prostate MRI-TRUS fusion.

All geometry is physical (mm, ITK/LPS). TRUS is the fixed image, MRI the moving image; transforms map a
fixed (TRUS) point to the moving (MRI) point, as every ITK resampling transform does.
"""

__version__ = "0.1.0"
