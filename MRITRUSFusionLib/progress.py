"""Progress reporting: tqdm bars for people, JSON lines for programs (the Slicer module).

Long steps call :func:`stage` and advance it. In ``json`` mode (``--progress json`` on the command line,
or ``MRITRUS_FUSION_PROGRESS=json`` in the environment) each update is one line on stderr::

    {"event": "progress", "stage": "register", "fraction": 0.25, "message": "affine level 2/3"}

which :func:`parse_progress_line` turns back into a dict. Fractions are per stage, in [0, 1].
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Iterator, Optional

from tqdm.auto import tqdm

ENV_MODE = "MRITRUS_FUSION_PROGRESS"
_PREFIX = '{"event": "progress"'


def mode() -> str:
    """Current mode: ``bar`` (tqdm, default), ``json`` (machine-readable lines) or ``none``."""
    return os.environ.get(ENV_MODE, "bar")


def set_mode(new_mode: str) -> None:
    """Select ``bar``, ``json`` or ``none`` for this process and the subprocesses it starts."""
    if new_mode not in ("bar", "json", "none"):
        raise ValueError(f"progress mode must be bar, json or none, not {new_mode!r}")
    os.environ[ENV_MODE] = new_mode


class Stage:
    """One named step with ``total`` units of work; call :meth:`advance` as units complete."""

    def __init__(self, name: str, total: int):
        self.name = name
        self.total = max(int(total), 1)
        self.done = 0
        self._bar: Optional[tqdm] = None
        if mode() == "bar":
            self._bar = tqdm(total=self.total, desc=name, leave=False, file=sys.stderr,
                             disable=None)  # disabled automatically when stderr is not a terminal
        self._emit("")

    def advance(self, units: int = 1, message: str = "") -> None:
        """Mark ``units`` more units done; ``message`` describes what just finished."""
        self.done = min(self.done + units, self.total)
        if self._bar is not None:
            self._bar.update(units)
            if message:
                self._bar.set_postfix_str(message, refresh=False)
        self._emit(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def _emit(self, message: str) -> None:
        if mode() == "json":
            line = {"event": "progress", "stage": self.name, "fraction": round(self.done / self.total, 4),
                    "message": message}
            print(json.dumps(line), file=sys.stderr, flush=True)


@contextlib.contextmanager
def stage(name: str, total: int = 1) -> Iterator[Stage]:
    """Context manager around one progress stage; the stage is reported complete on normal exit."""
    current = Stage(name, total)
    try:
        yield current
        if current.done < current.total:
            current.advance(current.total - current.done)
    finally:
        current.close()


def parse_progress_line(line: str) -> Optional[dict]:
    """The progress event in one stderr line, or ``None`` when the line is ordinary output."""
    line = line.strip()
    if not line.startswith(_PREFIX):
        return None
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None
