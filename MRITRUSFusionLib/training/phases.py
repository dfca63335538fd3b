"""Multi-phase schedules: which parameters train during which steps (e.g. seed 000's registration pre-training,
then segmentation with registration frozen or fine-tuned).

A config without ``phases`` is one phase of ``iterations`` steps training every parameter. Parameters are
named as in ``network.named_parameters()``; a phase selects them by name prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from ..errors import InputError


@dataclass(frozen=True)
class Phase:
    """Steps ``start .. start + iterations - 1`` (0-based) of a run and what trains during them."""

    index: int
    name: str
    start: int
    iterations: int
    trainable: tuple[str, ...] = ()
    frozen: tuple[str, ...] = ()
    lr_scale: float = 1.0
    loss: Optional[object] = field(default=None, compare=False)

    @property
    def stop(self) -> int:
        return self.start + self.iterations

    def trains(self, parameter: str) -> bool:
        """Whether the parameter named ``parameter`` is optimised in this phase."""
        selected = not self.trainable or any(parameter.startswith(p) for p in self.trainable)
        return selected and not any(parameter.startswith(p) for p in self.frozen)


def plan_phases(config) -> list[Phase]:
    """The phases of ``config`` in order, with their first steps."""
    if not config.phases:
        return [Phase(0, "train", 0, config.iterations)]
    plan, start = [], 0
    for index, phase in enumerate(config.phases):
        plan.append(Phase(index, phase.name or f"phase{index}", start, phase.iterations, tuple(phase.trainable),
                          tuple(phase.frozen), phase.lr_scale, phase.loss))
        start += phase.iterations
    return plan


def phase_at(plan: list[Phase], step: int) -> Phase:
    """The phase running step ``step`` (0-based); the last phase for steps past the end."""
    for phase in plan:
        if step < phase.stop:
            return phase
    return plan[-1]


def check_phases(plan: list[Phase], network: torch.nn.Module) -> None:
    """:class:`InputError` naming the config key of a prefix that matches no parameter, or of a phase that
    would train nothing."""
    names = [name for name, _ in network.named_parameters()]
    for phase in plan:
        for key in ("trainable", "frozen"):
            for prefix in getattr(phase, key):
                if not any(name.startswith(prefix) for name in names):
                    roots = sorted({name.split(".")[0] + "." + name.split(".")[1] if "." in name else name
                                    for name in names})
                    raise InputError(f"config key 'phases[{phase.index}].{key}': no parameter starts with "
                                     f"'{prefix}' (parameters start with {', '.join(roots[:8])}...)")
        if not any(phase.trains(name) for name in names):
            raise InputError(f"config key 'phases[{phase.index}]': phase '{phase.name}' trains no parameter")


def apply_phase(phase: Phase, network: torch.nn.Module) -> int:
    """Set ``requires_grad`` of every parameter for ``phase``; returns the number of trainable tensors.

    Frozen parameters get no gradient, so the optimiser leaves them (and their state) untouched.
    """
    count = 0
    for name, parameter in network.named_parameters():
        parameter.requires_grad_(phase.trains(name))
        count += int(parameter.requires_grad)
    return count
