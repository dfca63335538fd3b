"""CUDA out of memory during inference: rerun on the CPU with a one-line warning, or fail with one clear line.

Inference entry points (segmentation, learned registration) wrap their device-bound work in
:func:`run_with_cpu_fallback`. The fallback is allowed by default when the user asked for ``--device auto``
(the best device available, CPU if need be) and refused when they asked for ``cuda`` explicitly; the Python
API's ``allow_cpu_fallback`` argument overrides either.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, TypeVar

import torch

from .errors import InputError

log = logging.getLogger("MRITRUSFusionLib")
T = TypeVar("T")
CPU = torch.device("cpu")


def fallback_allowed(device: str | torch.device, allow_cpu_fallback: Optional[bool] = None) -> bool:
    """``allow_cpu_fallback`` when given, else whether ``device`` was requested as ``auto``."""
    if allow_cpu_fallback is not None:
        return bool(allow_cpu_fallback)
    return str(device).strip().lower() == "auto"


def _out_of_memory(error: Optional[BaseException]) -> Optional[BaseException]:
    """The CUDA out-of-memory error ``error`` is, or was raised from (MONAI's sliding windows wrap it in a
    ``RuntimeError``); None for any other error."""
    while error is not None:
        if isinstance(error, torch.cuda.OutOfMemoryError):
            return error
        error = error.__cause__
    return None


def _reason(error: BaseException) -> str:
    """The first line of a CUDA out-of-memory message (``CUDA out of memory. Tried to allocate ...``)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else "CUDA out of memory"


def run_with_cpu_fallback(run: Callable[[torch.device], T], device: torch.device, task: str,
                          allow_cpu_fallback: bool) -> T:
    """``run(device)``; if CUDA runs out of memory, ``run(cpu)`` after a one-line warning, when allowed.

    ``run`` must place everything it needs on the device it is given (reload or move weights, move inputs),
    so the CPU rerun uses nothing left on the GPU.

    Raises:
        InputError: CUDA ran out of memory and the fallback is not allowed; the message says what to do.
    """
    try:
        return run(device)
    except RuntimeError as error:
        out_of_memory = _out_of_memory(error)
        if out_of_memory is None:
            raise
        reason = _reason(out_of_memory)
        if not allow_cpu_fallback:
            raise InputError(f"{task}: {reason} on {device}; use --device cpu, or --device auto to fall back to "
                             "the CPU") from None
    # retried outside the except block, so the failed attempt's tensors (held by the traceback) are freed
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    log.warning("warning: %s: %s on %s; running on the CPU instead (slower)", task, reason, device)
    return run(CPU)
