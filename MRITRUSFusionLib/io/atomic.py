"""Atomic output files: write to a temporary sibling, then rename over the target.

A process killed mid-write (even by SIGKILL) leaves the previous file untouched under its name; the only
possible leftover is the hidden temporary sibling ``.NAME.XXXXXXXX.part.SUFFIX``, which dataset listings
skip and which may be deleted at any time no process is writing ``NAME``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import InputError, OutputExistsError

#: Multi-part suffixes that writers dispatch on; the temporary file keeps them.
_COMPOUND_SUFFIXES = (".nii.gz", ".seg.nrrd", ".mrk.json")


def full_suffix(path: str | os.PathLike) -> str:
    """The format suffix of ``path``, lower-case, e.g. ``.nii.gz``, ``.seg.nrrd`` or ``.tfm``."""
    name = Path(path).name.lower()
    for suffix in _COMPOUND_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on failure delete it.

    The temporary name keeps the suffix of ``path`` so format-dispatching writers (SimpleITK, pynrrd)
    write the right format. A previous file at ``path`` is untouched unless the block succeeds.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        InputError: ``path`` is a folder, or a file stands where one of its folders should be.
    """
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{target}: is a folder; give a file name for this output")
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target}: output exists (pass --overwrite to replace it)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next(parent for parent in target.parents if parent.exists())
        raise InputError(f"{target}: cannot create its folder: {blocker} is a file") from None
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".part{full_suffix(target)}",
                                    dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(content: dict, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Write ``content`` as indented JSON to ``path`` atomically; return the path."""
    import json

    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    return Path(path)
