"""Locating one prediction file per case in a predictions folder (``<folder>/<case><suffix>``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError
from ..io.datasets import case_name

#: Suffixes of registration predictions: ITK transform files (``.h5`` for displacement fields / composites).
TRANSFORM_SUFFIXES = (".h5", ".tfm", ".txt")
#: Suffixes of segmentation predictions and of label / detection-map files.
IMAGE_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")
#: How many missing cases an error message names before it only counts the rest.
_NAMED_IN_ERRORS = 5


def _alternatives(name: str, suffixes: Sequence[str]) -> str:
    """``obs003.h5, obs003.tfm or obs003.txt``."""
    files = [f"{name}{suffix}" for suffix in suffixes]
    return files[0] if len(files) == 1 else f"{', '.join(files[:-1])} or {files[-1]}"


def find_case_files(
    folder: str | os.PathLike,
    names: Sequence[str],
    suffixes: Sequence[str],
    option: str = "--predictions",
    what: str = "prediction",
) -> dict[str, Path]:
    """Case name -> the file ``folder/<name><suffix>`` for each of ``names`` (the first suffix that exists).

    ``option`` and ``what`` only word the error messages, e.g.
    ``--predictions preds: no transform for case obs003 (expected obs003.h5, obs003.tfm or obs003.txt)``.

    Raises:
        InputError: ``folder`` is not a folder; a case has no file (the message names the first few missing
            cases and counts them all); a case has two candidate files (e.g. ``.h5`` and ``.tfm``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{option} {folder}: no such folder")
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in names:
        candidates = [folder / f"{name}{suffix}" for suffix in suffixes if (folder / f"{name}{suffix}").is_file()]
        if len(candidates) > 1:
            raise InputError(f"{option} {folder}: case {name} has several {what} files "
                             f"({', '.join(c.name for c in candidates)}); keep one")
        if candidates:
            found[name] = candidates[0]
        else:
            missing.append(name)
    if missing:
        message = f"{option} {folder}: no {what} for case {missing[0]} (expected {_alternatives(missing[0], suffixes)})"
        if len(missing) > 1:
            named = ", ".join(missing[1:_NAMED_IN_ERRORS])
            more = f", ... ({len(missing)} cases in all)" if len(missing) > _NAMED_IN_ERRORS else ""
            message += f"; also missing: {named}{more}"
        raise InputError(message)
    return found


def list_case_files(folder: str | os.PathLike, option: str) -> dict[str, Path]:
    """Case name -> file of every non-hidden file in ``folder`` (``obs000.nii.gz`` is case ``obs000``), sorted.

    Raises:
        InputError: ``folder`` is not a folder, holds no file, or holds two files of one case.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{option} {folder}: no such folder")
    files: dict[str, Path] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        name = case_name(path)
        if name in files:
            raise InputError(f"{option} {folder}: two files for case {name}: {files[name].name} and {path.name}")
        files[name] = path
    if not files:
        raise InputError(f"{option} {folder}: no files")
    return files


def select_cases(cases: list, names: Sequence[str] | None, dataset: str | os.PathLike) -> list:
    """The cases of ``cases`` (objects with a ``name``) named in ``names``, in dataset order; all when None.

    Raises:
        InputError: no case is left, or a name is not a case of ``dataset``.
    """
    if names is not None:
        unknown = sorted(set(names) - {case.name for case in cases})
        if unknown:
            raise InputError(f"dataset {dataset}: no case(s) {', '.join(unknown[:_NAMED_IN_ERRORS])}"
                             f"{' ...' if len(unknown) > _NAMED_IN_ERRORS else ''}")
        cases = [case for case in cases if case.name in set(names)]
    if not cases:
        raise InputError(f"dataset {dataset}: no cases")
    return cases
