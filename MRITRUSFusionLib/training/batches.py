"""Batch sources driven by one seeded NumPy generator per run.

Every process draws the whole global batch from the same generator and keeps samples
``rank * b .. (rank + 1) * b - 1`` (``b = global_batch / world_size``), so any number of processes trains on
the samples one process would, and the generator position is the whole state a resumed run needs.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np
import torch


class GeneratorBatches:
    """The shared part of the generator-driven batch sources: ``rng``, the slice ``mine`` of each global batch,
    and the resumable state.

    Args:
        generator_seed: seed of ``numpy.random.default_rng`` (an int or a sequence of ints).
        global_batch: samples per optimiser step over all processes.
        rank, world_size: this process and the number of processes (``global_batch % world_size == 0``).
    """

    #: Tag written into :meth:`state_dict`.
    kind = "batches"

    def __init__(self, generator_seed: Any, global_batch: int, rank: int = 0, world_size: int = 1):
        self.global_batch = int(global_batch)
        local = self.global_batch // world_size
        self.mine = range(int(rank) * local, (int(rank) + 1) * local)
        self.rng = np.random.default_rng(generator_seed)

    def state_dict(self) -> dict:
        """The generator position (JSON text: its 128-bit integers stay exact)."""
        return {"kind": self.kind, "generator": json.dumps(self.rng.bit_generator.state)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a :meth:`state_dict`."""
        self.rng.bit_generator.state = json.loads(state["generator"])

    def close(self) -> None:
        """Nothing to release (the interface of the file batches)."""


class CaseSeedBatches(GeneratorBatches):
    """Batches of prepared ``cases``: the generator picks each sample's case and an integer seed below
    ``seed_bound``, and :meth:`sample` builds the sample from the two alone (so it does not depend on the
    process that builds it)."""

    #: Exclusive upper bound of the per-sample seeds.
    seed_bound = 2**31 - 1

    def __init__(self, cases: Sequence[Any], global_batch: int, generator_seed: Any, rank: int = 0,
                 world_size: int = 1):
        super().__init__(generator_seed, global_batch, rank, world_size)
        self.cases = cases

    def sample(self, case: Any, seed: int) -> dict[str, torch.Tensor]:
        """One training sample of ``case`` drawn with ``seed``."""
        raise NotImplementedError

    def next_batch(self) -> dict[str, torch.Tensor]:
        """The next step's samples of this process, stacked per key."""
        picks = self.rng.integers(len(self.cases), size=self.global_batch)
        seeds = self.rng.integers(self.seed_bound, size=self.global_batch)
        samples = [self.sample(self.cases[picks[index]], int(seeds[index])) for index in self.mine]
        return {key: torch.stack([sample[key] for sample in samples]) for key in samples[0]}
