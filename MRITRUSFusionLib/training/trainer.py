"""Train any registered model from a :class:`~.config.TrainingConfig`: one loop for every model and machine.

A run validates on the configured metric every ``validate_every`` steps and at the end, keeps ``last.pt``
and ``best.pt`` training checkpoints in its run folder (see :mod:`.state`), resumes exactly from them,
writes TensorBoard scalars and a throughput line (:mod:`.monitor`), clips gradients, uses mixed precision
on CUDA, follows multi-phase schedules (:mod:`.phases`) and runs data-parallel under ``torchrun``
(:mod:`.distributed`). On CPU, runs are deterministic for a given ``seed``: same config, same weights,
whether uninterrupted or stopped and resumed. The inference checkpoint (best, else last, without training
state) goes to ``output``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from ..errors import InputError
from ..io import atomic_output
from ..memory_format import channels_last
from ..progress import stage
from ..segmentation.checkpoints import read_checkpoint
from . import distributed
from .config import TrainingConfig, as_config, check_model_name
from .data_config import check_data_paths
from .monitor import TrainingMonitor
from .optim import build_optimiser, build_scheduler
from .phases import Phase, apply_phase, check_phases, phase_at, plan_phases
from .sources import DataSource
from .state import (RunProgress, inference_checkpoint, read_training_checkpoint, restore, save,
                    training_checkpoint)
from .tasks import GLAND_STRAIN, Task, is_better, task_for

log = logging.getLogger("MRITRUSFusionLib.training")

LAST, BEST, HISTORY = "last.pt", "best.pt", "history.json"


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed torch and require deterministic algorithms inside the block (restored afterwards)."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def build_network(config: TrainingConfig, spec=None) -> tuple[torch.nn.Module, dict]:
    """The untrained network of ``config.model`` and its builder arguments (``spec`` kept for old callers)."""
    return task_for(config).build()


@dataclass
class Run:
    """Everything a training run holds while it goes."""

    config: TrainingConfig
    task: Task
    context: distributed.DistributedContext
    run_dir: Path
    network: torch.nn.Module
    arguments: dict
    plan: list[Phase]
    source: DataSource
    optimiser: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: Optional[Any]
    progress: RunProgress

    def checkpoint(self) -> dict:
        """The training checkpoint of the current state."""
        latest = self.progress.validations[-1] if self.progress.validations else None
        metrics = ({f"validation_{latest['metric']}": latest["cases"], "validation_mean": latest["value"]}
                   if latest else {})
        model = self.task.checkpoint(self.network, self.arguments, config=self.config.model_dump(mode="json"),
                                     iterations=self.config.iterations, final_loss=self.progress.running_loss,
                                     metrics=metrics)
        return training_checkpoint(model, self.progress, self.optimiser, self.scheduler, self.scaler,
                                   self.source.batches)

    def save(self, name: str) -> Path:
        """Write the training checkpoint ``run_dir/name`` (main process only)."""
        path = self.run_dir / name
        if self.context.is_main:
            save(self.checkpoint(), path)
        return path


def _resume_path(resume, run_dir: Path) -> Optional[Path]:
    """The checkpoint to resume from: None, ``run_dir/last.pt`` for ``True``, or the given path."""
    if resume is None or resume is False:
        return None
    path = run_dir / LAST if resume is True else Path(resume)
    if not path.is_file():
        raise InputError(f"--resume: no checkpoint at {path} (runs keep last.pt in their run folder)")
    return path


def _grad_scaler():
    """A CUDA gradient scaler (``torch.amp`` from torch 2.3, ``torch.cuda.amp`` before)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda")
    return torch.cuda.amp.GradScaler()


def _prepare(config: TrainingConfig, task: Task, context: distributed.DistributedContext,
             run_dir: Path, checkpoint: Optional[dict]) -> Run:
    """Build network, data, optimiser and schedule (seeded), and restore ``checkpoint`` when resuming."""
    network, arguments = task.build()
    network = channels_last(network.to(context.device))
    plan = plan_phases(config)
    check_phases(plan, network)
    with (stage("prepare", 1) if context.is_main else contextlib.nullcontext()) as bar:
        source = task.build_source(config, context.rank, context.world_size)
        if bar is not None:
            bar.advance(1, source.description)
            log.info("data: %s", source.description)
    optimiser = build_optimiser(config.optimiser, network)
    scheduler = build_scheduler(optimiser, config.optimiser, plan)
    use_amp = config.amp and context.device.type == "cuda"
    if config.amp and not use_amp and context.is_main:
        log.info("amp: mixed precision needs CUDA; training in float32 on %s", context.device)
    scaler = _grad_scaler() if use_amp else None
    run = Run(config, task, context, run_dir, network, arguments, plan, source, optimiser, scheduler, scaler,
              RunProgress())
    if checkpoint is not None:
        run.progress = restore(checkpoint, network, optimiser, scheduler, scaler, source.batches)
    return run


def _validate(run: Run, loss_function, monitor: TrainingMonitor) -> None:
    """Score the validation volumes (main process), record them and write ``best.pt`` on improvement."""
    if not run.source.validation:
        return
    if run.context.is_main:
        metric = run.config.validation.metric
        result = run.task.score(run.network, run.source.validation, metric, loss_function, run.context.device)
        run.progress.validations.append({"step": run.progress.step, "metric": metric, "value": result["mean"],
                                         "cases": result["cases"]})
        monitor.validation(run.progress.step, metric, result["mean"])
        best = run.progress.best["value"] if run.progress.best else None
        if is_better(metric, result["mean"], best):
            run.progress.best = {"step": run.progress.step, "metric": metric, "value": result["mean"]}
            run.save(BEST)
    distributed.barrier(run.context)


def _step(run: Run, model: torch.nn.Module, loss_function) -> torch.Tensor:
    """One optimiser step on the next batch; returns the (local) loss."""
    batch = run.source.batches.next_batch()
    run.optimiser.zero_grad(set_to_none=True)
    autocast = (torch.autocast(device_type="cuda", dtype=torch.float16) if run.scaler is not None
                else contextlib.nullcontext())
    with autocast:
        loss = run.task.loss(model, batch, loss_function, run.context.device)
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
    else:
        loss.backward()
    if run.config.grad_clip:
        if run.scaler is not None:
            run.scaler.unscale_(run.optimiser)
        torch.nn.utils.clip_grad_norm_([p for p in run.network.parameters() if p.requires_grad], run.config.grad_clip)
    if run.scaler is not None:
        run.scaler.step(run.optimiser)
        run.scaler.update()
    else:
        run.optimiser.step()
    run.scheduler.step()
    return loss.detach()


def _loop(run: Run, monitor: TrainingMonitor, stop_after: Optional[int]) -> bool:
    """Train from ``run.progress.step``; True when the run reached its last step (False: stopped early)."""
    config, progress = run.config, run.progress
    start, phase, model, loss_function = progress.step, None, run.network, None
    for step in range(start, config.iterations):
        if phase_at(run.plan, step) != phase:
            phase = phase_at(run.plan, step)
            apply_phase(phase, run.network)
            model = distributed.wrap(run.network, run.context)
            loss_function = run.task.loss_function(phase.loss or config.loss)
            run.network.train()
            if run.context.is_main and len(run.plan) > 1:
                log.info("phase %d '%s': steps %d-%d", phase.index, phase.name, phase.start + 1, phase.stop)
        monitor.step_started()
        lr = run.optimiser.param_groups[0]["lr"]
        loss = distributed.mean_over_processes(_step(run, model, loss_function), run.context)
        progress.step = step + 1
        progress.running_loss = loss if progress.running_loss is None else 0.95 * progress.running_loss + 0.05 * loss
        monitor.step_done(progress.step, loss, progress.running_loss, lr)
        if config.log_every and progress.step % config.log_every == 0:
            progress.losses.append({"step": progress.step, "loss": progress.running_loss, "lr": lr})
        if config.validate_every and progress.step % config.validate_every == 0 and progress.step < config.iterations:
            _validate(run, loss_function, monitor)
        if config.checkpoint_every and progress.step % config.checkpoint_every == 0:
            run.save(LAST)
        if stop_after is not None and progress.step - start >= stop_after and progress.step < config.iterations:
            return False
    if not progress.validations or progress.validations[-1]["step"] != progress.step:
        _validate(run, loss_function or run.task.loss_function(config.loss), monitor)
    return True


def _write_outputs(run: Run, target: Path, monitor: TrainingMonitor) -> None:
    """``last.pt``, ``history.json`` and the inference checkpoint ``target`` (best, else last)."""
    run.save(LAST)
    if not run.context.is_main:
        return
    final = read_checkpoint(run.run_dir / BEST) if run.progress.best else run.checkpoint()
    final = inference_checkpoint(final)
    final["samples_per_s"] = monitor.samples_per_s
    save(final, target)
    with atomic_output(run.run_dir / HISTORY) as tmp:
        tmp.write_text(json.dumps({"best": run.progress.best, **run.progress.as_dict(),
                                   "samples_per_s": monitor.samples_per_s}, indent=1) + "\n",
                       encoding="utf-8")


def train(config: TrainingConfig | dict | str | os.PathLike, out: Optional[str | os.PathLike] = None,
          resume: bool | str | os.PathLike | None = None, stop_after: Optional[int] = None,
          device: Optional[str] = None) -> Path:
    """Train the model described by ``config`` (object, mapping or YAML path).

    Args:
        config: the training configuration.
        out: inference checkpoint path; default ``config.output``. The run folder (``last.pt``, ``best.pt``,
            ``history.json``, ``tensorboard/``) is ``config.run_dir``, default ``<out>.run`` beside it.
        resume: ``True`` to go on from ``last.pt`` of the run folder, or a training checkpoint path.
        stop_after: stop after this many steps of this call and write ``last.pt`` (as an interruption
            would after a checkpoint); the run is then resumed with ``resume=True``.
        device: ``auto``, ``cpu`` or ``cuda``, overriding ``config.device``.

    Returns:
        The inference checkpoint path (readable by :func:`MRITRUSFusionLib.segmentation.load_model`), or
        ``last.pt`` of the run folder when stopped by ``stop_after``.

    Raises:
        InputError: invalid configuration, missing data path, device, or resume checkpoint; all raised
            before any training work.
    """
    config = as_config(config)
    if device is not None:
        config = config.model_copy(update={"device": device})
    check_data_paths(config.data)
    check_model_name(config)
    target = Path(out) if out is not None else config.output
    if config.model.name == GLAND_STRAIN:  # a closed-form fit, no optimiser loop
        from .gland_strain_fit import train_gland_strain
        return train_gland_strain(config, target)
    if config.ensemble_seeds:  # one run per member, then one checkpoint
        from .ensemble import train_ensemble
        return train_ensemble(config, target, resume, stop_after, device, train)
    task = task_for(config)
    run_dir = config.resolved_run_dir(target)
    resume_path = _resume_path(resume, run_dir)
    checkpoint = (read_training_checkpoint(resume_path, config.model.name, config.model_dump(mode="json"))
                  if resume_path else None)
    context = distributed.setup(config.device)
    try:
        with deterministic(config.seed):
            run = _prepare(config, task, context, run_dir, checkpoint)
            monitor = TrainingMonitor(run_dir, config.iterations, run.progress.step, config.batch_size,
                                      config.log_every, context.is_main)
            try:
                finished = _loop(run, monitor, stop_after)
                if not finished:
                    return run.save(LAST)
                _write_outputs(run, target, monitor)
            finally:
                monitor.close()
                run.source.batches.close()
        distributed.barrier(context)
        return target
    finally:
        distributed.teardown(context)
