"""Training of the library's models: YAML configurations, synthetic data and the trainer."""

from .config import HELD_OUT_PHANTOM_SEEDS, TrainingConfig, config_from_dict, load_config
from .trainer import train

__all__ = ["HELD_OUT_PHANTOM_SEEDS", "TrainingConfig", "config_from_dict", "load_config", "train"]
