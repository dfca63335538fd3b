"""Training of the library's models: YAML configurations, data sources, the trainer, checkpoints, torchrun.

See ``docs/training.md``. ``train(config)`` runs on one CPU or GPU, or data-parallel under ``torchrun``.
"""

from .case_names import HELD_OUT_CASES
from .config import HELD_OUT_PHANTOM_SEEDS, TrainingConfig, config_from_dict, load_config
from .trainer import train

__all__ = ["HELD_OUT_CASES", "HELD_OUT_PHANTOM_SEEDS", "TrainingConfig", "config_from_dict", "load_config", "train"]
