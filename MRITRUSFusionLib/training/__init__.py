"""Training of the library's models: YAML configurations, data sources, the trainer, checkpoints, torchrun.

See ``docs/training.md``. ``train(config)`` runs on one CPU or GPU, or data-parallel under ``torchrun``.
Importing this package is light (configs only); :func:`train` imports torch and MONAI on first use, so a
bad config fails in a fraction of a second.
"""

from typing import Any

from .case_names import HELD_OUT_CASES
from .config import HELD_OUT_PHANTOM_SEEDS, TrainingConfig, config_from_dict, load_config

__all__ = ["HELD_OUT_CASES", "HELD_OUT_PHANTOM_SEEDS", "TrainingConfig", "config_from_dict", "load_config", "train"]


def __getattr__(name: str) -> Any:
    if name == "train":
        from .trainer import train
        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
