"""What a run reports while it trains: progress bar, log lines, TensorBoard scalars and throughput.

Only the main process reports (:class:`TrainingMonitor` is silent elsewhere). The bar is a
:func:`MRITRUSFusionLib.progress.stage` (tqdm, or JSON lines for the Slicer module) with the running loss,
samples/s and ETA; log lines go to the ``MRITRUSFusionLib.training`` logger; TensorBoard scalars
``train/loss``, ``train/lr``, ``train/samples_per_s`` and ``validation/<metric>`` go to ``RUN_DIR/tensorboard``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

from ..progress import Stage

log = logging.getLogger("MRITRUSFusionLib.training")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def tensorboard_writer(folder: Path, start: int):
    """A ``SummaryWriter`` on ``folder`` (events after ``start`` replaced on resume), or None without tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a declared dependency, but a bare environment may lack it
        log.warning("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
        return None
    return SummaryWriter(log_dir=str(folder), purge_step=start if start else None)


class TrainingMonitor:
    """Reports of one run from step ``start`` to ``total``; ``global_batch`` samples per step."""

    def __init__(self, run_dir: Path, total: int, start: int, global_batch: int, log_every: int, enabled: bool):
        self.total, self.start, self.global_batch, self.log_every = total, start, global_batch, log_every
        self.enabled = enabled
        self.train_seconds = 0.0
        self.steps = 0
        self._step_started: Optional[float] = None
        self.bar: Optional[Stage] = None
        self.writer = None
        if enabled:
            self.writer = tensorboard_writer(Path(run_dir) / "tensorboard", start)
            self.bar = Stage("train", total)
            if start:
                self.bar.advance(start, f"resumed at step {start}")

    @property
    def samples_per_s(self) -> float:
        """Training throughput of this run so far (global samples per second, validation excluded)."""
        return self.steps * self.global_batch / self.train_seconds if self.train_seconds > 0 else 0.0

    def step_started(self) -> None:
        self._step_started = time.perf_counter()

    def step_done(self, step: int, loss: float, running: float, lr: float) -> None:
        """Step ``step`` (1-based) finished with the global-batch ``loss``."""
        self.train_seconds += time.perf_counter() - (self._step_started or time.perf_counter())
        self.steps += 1
        if not self.enabled:
            return
        eta = (self.total - step) * self.train_seconds / self.steps
        self.bar.advance(1, f"loss {running:.4f}, {self.samples_per_s:.2f} samples/s, eta {_duration(eta)}")
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)
            self.writer.add_scalar("train/samples_per_s", self.samples_per_s, step)
        if self.log_every and step % self.log_every == 0:
            log.info("step %d/%d loss %.4f lr %.3g, %.2f samples/s, eta %s", step, self.total, running, lr,
                     self.samples_per_s, _duration(eta))

    def validation(self, step: int, metric: str, value: float) -> None:
        if not self.enabled:
            return
        log.info("step %d validation %s %.4f", step, metric, value)
        if self.writer is not None:
            self.writer.add_scalar(f"validation/{metric}", value, step)

    def close(self) -> None:
        """Close the bar and the TensorBoard file; log the throughput line."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        log.info("throughput: %.2f samples/s (%d steps of %d samples in %.1f s)", self.samples_per_s, self.steps,
                 self.global_batch, self.train_seconds)
