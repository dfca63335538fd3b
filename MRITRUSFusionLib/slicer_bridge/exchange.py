"""A temporary folder for the files the Slicer module passes to the CLI and reads back from it.

Inputs are written by Slicer (``slicer.util.saveNode``), outputs by the CLI; both keep physical LPS
geometry because every format used here stores it (NRRD, NIfTI, ITK transforms, ``.mrk.json`` with its
coordinate system). The folder is deleted when the exchange closes -- also after a failure or a cancel,
so no partial output is left behind -- unless ``keep_on_failure`` asks to keep it for debugging::

    with TempExchange(keep_on_failure=debug) as exchange:
        trus = exchange.input_path("trus", "volume")        # .../in_trus.nrrd
        transform = exchange.output_path("transform", "transform")
        ...
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional

#: File suffix of each kind of data exchanged with the CLI.
SUFFIXES = {
    "volume": ".nrrd",  # scalar image (MRI, TRUS, ADC, warped MRI)
    "label": ".nrrd",  # integer label map (gland masks), 0 = background
    "segmentation": ".seg.nrrd",  # Slicer segmentation
    "probabilities": ".nii.gz",  # per-voxel probabilities of a segmentation model
    "transform": ".h5",  # ITK transform, any type (linear, B-spline, displacement field, composite)
    "linear_transform": ".tfm",
    "markups": ".mrk.json",  # points (biopsy targets)
    "json": ".json",  # metrics, reports
    "text": ".txt",  # e.g. pip constraints
}
_ROLE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class TempExchange:
    """Owns one temporary folder; hands out unique input/output paths inside it; removes it on close."""

    def __init__(self, prefix: str = "mritrus-fusion-", keep_on_failure: bool = False,
                 parent: Optional[str] = None):
        self.prefix = prefix
        self.keep_on_failure = keep_on_failure
        self.parent = parent
        self.folder: Optional[Path] = None
        self._paths: dict = {}

    def open(self) -> "TempExchange":
        if self.folder is not None:
            raise RuntimeError("this exchange is already open")
        self.folder = Path(tempfile.mkdtemp(prefix=self.prefix, dir=self.parent))
        return self

    def close(self, failed: bool = False) -> Optional[Path]:
        """Delete the folder; when ``failed`` and ``keep_on_failure``, keep it and return its path."""
        folder, self.folder = self.folder, None
        if folder is None:
            return None
        if failed and self.keep_on_failure:
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        return None

    def __enter__(self) -> "TempExchange":
        return self.open()

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.close(failed=exc_type is not None)

    def input_path(self, role: str, kind: str) -> Path:
        """Path of an input file, e.g. ``input_path("trus", "volume")`` -> ``FOLDER/in_trus.nrrd``."""
        return self._new_path("in", role, kind)

    def output_path(self, role: str, kind: str) -> Path:
        """Path of a file the CLI will write, e.g. ``output_path("seg", "segmentation")``."""
        return self._new_path("out", role, kind)

    def _new_path(self, direction: str, role: str, kind: str) -> Path:
        if self.folder is None:
            raise RuntimeError("open the exchange first")
        if kind not in SUFFIXES:
            raise ValueError(f"unknown file kind {kind!r}; expected one of {', '.join(SUFFIXES)}")
        if not _ROLE_PATTERN.match(role):
            raise ValueError(f"role {role!r} must be letters, digits, '_' or '-'")
        key = (direction, role)
        if key in self._paths:
            raise ValueError(f"{direction}put {role!r} was already given a path")
        path = self.folder / f"{direction}_{role}{SUFFIXES[kind]}"
        self._paths[key] = path
        return path
