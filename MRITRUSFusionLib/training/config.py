"""Training configuration: pydantic models read from YAML; every error names the offending key.

A configuration (see ``MRITRUSFusionLib/configs/trus-unet.yaml``) has the sections ``model``, ``loss``,
``data``, ``optimiser`` and ``validation`` plus top-level geometry (``patch_size`` in voxels,
``spacing_mm``), ``iterations``, ``batch_size``, ``seed``, ``device`` and ``output``. Unknown keys are
errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import InputError

#: Phantom seeds kept for held-out evaluation: training and validation never use them.
HELD_OUT_PHANTOM_SEEDS = range(1000, 1100)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _length(value: Any, length: int, meaning: str) -> Any:
    """``value`` unchanged, or ValueError when it is a list/tuple of another length (before parsing)."""
    if isinstance(value, (list, tuple)) and len(value) != length:
        raise ValueError(f"expected {length} values {meaning}, got {len(value)}")
    return value


def _ordered_pair(value: tuple, key: str) -> tuple:
    if value[0] > value[1]:
        raise ValueError(f"{key} must be [low, high] with low <= high, got {list(value)}")
    return value


class ModelSection(_Section):
    """The network: a registry name and builder keyword arguments overriding the registry defaults."""

    name: str = "trus-unet"
    arguments: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from ..segmentation.models import MODELS
        if name not in MODELS:
            raise ValueError(f"unknown model '{name}'; available: {', '.join(sorted(MODELS))}")
        return name


class LossSection(_Section):
    """Dice + cross-entropy (``monai.losses.DiceCELoss`` on softmax outputs) with their weights."""

    name: Literal["dice_ce"] = "dice_ce"
    lambda_dice: float = Field(1.0, ge=0)
    lambda_ce: float = Field(1.0, ge=0)


class PhantomDataSection(_Section):
    """Synthetic training cases: phantoms of seeds ``seed_start .. seed_start + count - 1`` with varied
    anatomy and tumour contrast, cropped into patches biased towards tumour and augmented."""

    source: Literal["phantom"] = "phantom"
    seed_start: int = Field(0, ge=0)
    count: int = Field(32, ge=1)
    #: Tumours per case, drawn uniformly in [low, high].
    n_tumours: tuple[int, int] = (1, 3)
    #: TRUS echogenicity of tumours (gland ≈ 0.5), drawn uniformly per case.
    tumour_echogenicity: tuple[float, float] = (0.2, 0.45)
    #: Range of tumour semi-axes (mm) passed to the phantom.
    tumour_radius_mm: tuple[float, float] = (3.5, 8.0)
    #: Factor on the default gland radii, drawn uniformly per case.
    gland_scale: tuple[float, float] = (0.85, 1.15)
    #: Probability that a patch is centred near a tumour voxel (else anywhere).
    tumour_patch_fraction: float = Field(0.7, ge=0, le=1)
    #: Image axes (ITK index order: 0 = i/L, 1 = j/P, 2 = k/S) flipped with probability 0.5 each.
    flip_axes: list[Literal[0, 1, 2]] = Field(default_factory=lambda: [0, 2])
    #: Multiplicative and additive jitter of the normalised intensities, and noise standard deviation.
    intensity_scale: tuple[float, float] = (0.9, 1.1)
    intensity_shift: float = Field(0.1, ge=0)
    noise_std: float = Field(0.05, ge=0)

    @field_validator("n_tumours", "tumour_echogenicity", "tumour_radius_mm", "gland_scale", "intensity_scale",
                     mode="before")
    @classmethod
    def _two(cls, value: Any) -> Any:
        return _length(value, 2, "[low, high]")

    @field_validator("n_tumours", "tumour_echogenicity", "tumour_radius_mm", "gland_scale", "intensity_scale")
    @classmethod
    def _pair(cls, value: tuple, info) -> tuple:
        return _ordered_pair(value, info.field_name)

    @model_validator(mode="after")
    def _no_held_out_seeds(self) -> "PhantomDataSection":
        used = range(self.seed_start, self.seed_start + self.count)
        if set(used) & set(HELD_OUT_PHANTOM_SEEDS):
            raise ValueError(f"seeds {used.start}..{used.stop - 1} overlap the held-out phantom seeds "
                             f"{HELD_OUT_PHANTOM_SEEDS.start}..{HELD_OUT_PHANTOM_SEEDS.stop - 1}")
        return self


class OptimiserSection(_Section):
    """Adam with a learning rate (decayed polynomially to 0 with ``schedule: poly``)."""

    name: Literal["adam"] = "adam"
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "poly"] = "poly"


class ValidationSection(_Section):
    """Phantom seeds (default phantom configuration) scored with Dice after training; empty = none."""

    seeds: list[int] = Field(default_factory=list)

    @field_validator("seeds")
    @classmethod
    def _not_held_out(cls, seeds: list[int]) -> list[int]:
        clash = sorted(set(seeds) & set(HELD_OUT_PHANTOM_SEEDS))
        if clash:
            raise ValueError(f"seeds {clash} are held-out phantom seeds")
        return seeds


class TrainingConfig(_Section):
    """A training run. Geometry: ``patch_size`` in voxels (i, j, k), ``spacing_mm`` isotropic in mm."""

    model: ModelSection = Field(default_factory=ModelSection)
    loss: LossSection = Field(default_factory=LossSection)
    data: PhantomDataSection = Field(default_factory=PhantomDataSection)
    optimiser: OptimiserSection = Field(default_factory=OptimiserSection)
    validation: ValidationSection = Field(default_factory=ValidationSection)
    patch_size: tuple[int, int, int] = (64, 64, 64)
    spacing_mm: float = Field(0.8, gt=0)
    iterations: int = Field(600, ge=1)
    batch_size: int = Field(2, ge=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Checkpoint file written at the end (relative paths: to the working directory).
    output: Path = Path("runs/trus-unet/trus-unet.pt")
    #: Log the running loss every this many iterations (0 = never).
    log_every: int = Field(50, ge=0)

    @field_validator("patch_size", mode="before")
    @classmethod
    def _three(cls, value: Any) -> Any:
        return _length(value, 3, "[i, j, k] in voxels")

    @field_validator("patch_size")
    @classmethod
    def _positive(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(value) < 1:
            raise ValueError(f"patch_size must be positive voxel counts, got {list(value)}")
        return value


def _key(location: tuple) -> str:
    """Dotted key of a pydantic error location (list indices as ``[i]``)."""
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _describe(error: ValidationError) -> str:
    """One line summarising every problem of ``error``, each naming its key."""
    problems = []
    for item in error.errors():
        key = _key(item["loc"])
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown key '{key}'")
        else:
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"key '{key}': {message} (got {item.get('input')!r})")
    return "; ".join(problems)


def config_from_dict(values: Any, source: str = "config") -> TrainingConfig:
    """Validate ``values`` (a mapping, e.g. parsed YAML) into a :class:`TrainingConfig`.

    Raises:
        InputError: ``<source>: <problem naming the key>``.
    """
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise InputError(f"{source}: expected a mapping of keys, got {type(values).__name__}")
    try:
        return TrainingConfig.model_validate(values)
    except ValidationError as error:
        raise InputError(f"{source}: {_describe(error)}") from None


def load_config(path: str | os.PathLike) -> TrainingConfig:
    """Read and validate the YAML training configuration at ``path``.

    Raises:
        InputError: missing file, invalid YAML, unknown key or wrong type (the message names the key).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config {path}: file not found")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        reason = " ".join(str(error).split())
        raise InputError(f"config {path}: not valid YAML ({reason})") from None
    return config_from_dict(values, source=f"config {path}")


def as_config(config: "TrainingConfig | dict | str | os.PathLike") -> TrainingConfig:
    """A :class:`TrainingConfig` from a config object, a mapping or a YAML path."""
    if isinstance(config, TrainingConfig):
        return config
    if isinstance(config, dict):
        return config_from_dict(config)
    return load_config(config)
