"""Population gland strain: the mean shape change of the prostate from MRI to TRUS that a rigid fit leaves.

The TRUS probe presses on the gland, so its TRUS shape is a deformed copy of its MRI shape. A rigid fit on
*predicted* glands is robust, but an affine fit on them turns segmentation errors into wrong scaling and shear
(see ``GLAND_PREALIGNMENT`` in :mod:`.methods`). This model adds back the part of the affine that is common to
the population, learned from training pairs' true masks, so that ``auto`` applies it after the rigid.

Fit (:func:`fit_gland_strain`), per training pair, on the true gland masks: the gland-driven rigid ``R`` and
affine ``A`` (TRUS point → MRI point, LPS mm). The residual ``R⁻¹∘A`` maps TRUS to TRUS; ``L_n`` is its linear
part. The strain is the symmetric part of their log-Euclidean mean, ``S = exp(sym(mean_n log L_n))``: the
antisymmetric part (a rotation) differs from case to case and is the rigid's job. On mrus-example obs000-obs069
it compresses the gland by about 9 % along LPS y and 5 % along z and stretches it by 2-3 % along x.

Use (:meth:`GlandStrain.after`): ``T(x) = R(S(x - c) + c)``, ``c`` the TRUS gland centroid (mm): the TRUS gland
is un-pressed about its centroid, then mapped by the rigid. The strain is stated in LPS axes (a patient frame),
so it transfers between grids and orientations of correctly oriented images; data acquired another way
should retrain it (``mritrus-fusion train MRITRUSFusionLib/configs/gland-strain.yaml``).

Files are JSON (``{"model": "gland-strain", "log_strain": 3×3, ...}``), small enough to read by eye.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import SimpleITK as sitk
from scipy.linalg import expm, logm

from ..errors import InputError
from ..metrics.landmarks import centroid_mm
from .classical import register_classical
from .linear import flatten_linear, linear_matrix, matrix_to_affine

MODEL_NAME = "gland-strain"
#: File name of the bundled model (found by :func:`MRITRUSFusionLib.segmentation.models.locate_weights`).
WEIGHTS_FILE = "gland-strain.json"
FORMAT_VERSION = 1


def residual_log(fixed: sitk.Image, moving: sitk.Image, fixed_mask: sitk.Image, moving_mask: sitk.Image) -> np.ndarray:
    """``log L`` (3×3, LPS) of one pair: ``L`` the linear part of ``R⁻¹∘A``, the gland-driven rigid ``R`` and
    affine ``A`` on the given masks (TRUS ``fixed``, MRI ``moving``)."""
    rigid = linear_matrix(register_classical(fixed, moving, "rigid", fixed_mask, moving_mask))
    affine = linear_matrix(register_classical(fixed, moving, "affine", fixed_mask, moving_mask))
    linear = (np.linalg.inv(rigid) @ affine)[:3, :3]
    if np.linalg.det(linear) <= 0:
        raise InputError("gland-strain: the affine fit flips the gland (determinant <= 0); check the masks")
    return np.real(logm(linear))


@dataclass(frozen=True)
class GlandStrain:
    """A symmetric log-strain ``log S`` (3×3, LPS axes) and what it was fitted on."""

    log_strain: np.ndarray
    cases: int
    #: Figures measured when fitting (e.g. validation TRE), kept in the file for the record.
    report: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        values = np.asarray(self.log_strain, dtype=float)
        if values.shape != (3, 3) or not np.all(np.isfinite(values)) or not np.allclose(values, values.T, atol=1e-9):
            raise InputError(f"gland-strain: log_strain must be a finite symmetric 3x3 matrix, got {values.tolist()}")
        object.__setattr__(self, "log_strain", values)

    @property
    def matrix(self) -> np.ndarray:
        """``S = exp(log S)`` (3×3, symmetric positive definite)."""
        return expm(self.log_strain)

    def about(self, centre_mm: np.ndarray) -> sitk.AffineTransform:
        """``x → S(x - c) + c`` with ``c = centre_mm`` (TRUS point → TRUS point, mm)."""
        centre = np.asarray(centre_mm, dtype=float)
        matrix = np.eye(4)
        matrix[:3, :3] = self.matrix
        matrix[:3, 3] = centre - self.matrix @ centre
        return matrix_to_affine(matrix)

    def after(self, rigid: sitk.Transform, fixed_mask: sitk.Image) -> sitk.AffineTransform:
        """``rigid ∘ strain`` about the centroid of the TRUS gland ``fixed_mask``: one affine, TRUS → MRI."""
        return flatten_linear(rigid, self.about(centroid_mm(fixed_mask)))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model as JSON to ``path``; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"model": MODEL_NAME, "format_version": FORMAT_VERSION, "frame": "LPS",
                                    "log_strain": self.log_strain.tolist(), "strain": self.matrix.tolist(),
                                    "cases": self.cases, "report": self.report}, indent=2) + "\n",
                        encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GlandStrain":
        """Read a model written by :meth:`save`.

        Raises:
            InputError: missing or unreadable file, or not a gland-strain model.
        """
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"gland-strain {path}: cannot read it ({error})") from None
        if not isinstance(values, dict) or values.get("model") != MODEL_NAME:
            raise InputError(f"gland-strain {path}: not a {MODEL_NAME} model file")
        return cls(np.array(values["log_strain"], dtype=float), int(values.get("cases", 0)),
                   dict(values.get("report", {})))


def fit_gland_strain(pairs: Iterable[tuple[sitk.Image, sitk.Image, sitk.Image, sitk.Image]]) -> GlandStrain:
    """The population strain of ``(fixed, moving, fixed_mask, moving_mask)`` training pairs (true gland masks).

    Raises:
        InputError: no pair.
    """
    logs = [residual_log(*pair) for pair in pairs]
    if not logs:
        raise InputError("gland-strain: no training pair to fit")
    mean = np.mean(logs, axis=0)
    return GlandStrain((mean + mean.T) / 2, len(logs))


def default_gland_strain() -> Optional[GlandStrain]:
    """The bundled (or ``$MRITRUS_FUSION_MODELS``) gland-strain model, or None when there is none."""
    from ..segmentation.models import locate_weights

    path = locate_weights(WEIGHTS_FILE)
    return GlandStrain.load(path) if path.is_file() else None

