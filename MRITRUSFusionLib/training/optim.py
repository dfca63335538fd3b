"""Optimiser and learning-rate schedule from the ``optimiser`` config section.

The schedule restarts in each phase: with ``t`` steps done of a phase of ``T`` (or of ``schedule_iterations``
when set, ``t`` then capped at ``T``), the factor on ``lr`` is ``lr_scale × warm-up(t) × decay(t / T)``, decay
being 1 (``constant``), ``(1 - t/T)^0.9`` (``poly``) or ``(1 + cos(π t/T)) / 2`` (``cosine``).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .config import OptimiserSection
from .phases import Phase, phase_at


def build_optimiser(section: OptimiserSection, network: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimiser over every parameter of ``network`` (frozen ones get no gradient and stay put)."""
    parameters = list(network.parameters())
    if section.name == "sgd":
        return torch.optim.SGD(parameters, lr=section.lr, momentum=section.momentum,
                               weight_decay=section.weight_decay)
    if section.name == "adamw":
        return torch.optim.AdamW(parameters, lr=section.lr, weight_decay=section.weight_decay)
    return torch.optim.Adam(parameters, lr=section.lr, weight_decay=section.weight_decay)


def _decay(schedule: str, done: int, total: int) -> float:
    if schedule == "poly":
        return (1.0 - done / total) ** 0.9
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * done / total))
    return 1.0


def lr_factor(section: OptimiserSection, plan: list[Phase]) -> Callable[[int], float]:
    """Factor on the base learning rate at step ``step`` (0-based steps done)."""
    def factor(step: int) -> float:
        phase = phase_at(plan, step)
        total = section.schedule_iterations or phase.iterations
        done = min(step - phase.start, total)
        value = _decay(section.schedule, done, total)
        if section.warmup_iterations and done < section.warmup_iterations:
            value *= (done + 1) / (section.warmup_iterations + 1)
        return value * phase.lr_scale if phase.lr_scale != 1.0 else value
    return factor


def build_scheduler(optimiser: torch.optim.Optimizer, section: OptimiserSection,
                    plan: list[Phase]) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepping once per optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(optimiser, lr_factor(section, plan))
