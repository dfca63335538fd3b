"""Atomic output files: write to a temporary sibling, then rename over the target."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import OutputExistsError

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
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target}: output exists (pass --overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
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
        tmp.write_text(json.dumps(content, indent=2) + "\n")
    return Path(path)
