"""Training configuration: pydantic models read from YAML; every error names the offending key.

A configuration (see ``MRITRUSFusionLib/configs/*.yaml`` and ``docs/training.md``) has the sections
``model``, ``loss``, ``data`` (:mod:`.data_config`), ``augmentation``, ``optimiser``, ``validation`` and
``phases``, plus top-level geometry (``patch_size`` in voxels, ``spacing_mm``), ``iterations``,
``batch_size`` (the global batch, split over distributed processes), ``seed``, ``ensemble_seeds``, ``device``, ``amp``,
``grad_clip``, ``validate_every``, ``checkpoint_every``, ``output`` and ``run_dir``. Unknown keys are errors,
so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from ..errors import InputError
from .data_config import (
    DATA_SOURCES,
    AttentionRegSampleDataSection,
    HELD_OUT_PHANTOM_SEEDS,
    DeepRegDataSection,
    ManifestDataSection,
    MuRegProDataSection,
    PhantomDataSection,
    Section,
    check_length,
    data_source_default,
)

__all__ = ["HELD_OUT_PHANTOM_SEEDS", "PhantomDataSection", "TrainingConfig", "as_config", "config_from_dict",
           "load_config"]

DataSection = Annotated[Union[PhantomDataSection, DeepRegDataSection, MuRegProDataSection, ManifestDataSection,
                              AttentionRegSampleDataSection], Field(discriminator="source")]


class ModelSection(Section):
    """The network: a registry name and builder keyword arguments overriding the registry defaults."""

    name: str = "trus-unet"
    arguments: dict[str, Any] = Field(default_factory=dict)
    #: Multi-stage models (``attention-reg``): a checkpoint of the same model whose stage networks run before
    #: the one trained here; training starts from its last stage and the output holds every stage.
    previous_stages: Optional[Path] = None


def check_model_name(config: "TrainingConfig", source: str = "config") -> None:
    """:class:`InputError` unless ``config.model.name`` is a trainable model.

    Separate from the schema check because it imports the model registries (torch): a config with a typo
    fails before those imports, in a fraction of a second.
    """
    from .tasks import known_models

    name = config.model.name
    if name not in known_models():
        raise InputError(f"{source}: key 'model.name': unknown model '{name}'; "
                         f"available: {', '.join(known_models())} (got {name!r})")


class LossTerm(Section):
    """One weighted term of a registration loss (see :mod:`MRITRUSFusionLib.losses.registration`)."""

    name: str
    weight: float = Field(1.0, ge=0)
    #: Keyword arguments of the term (e.g. ``num_bins`` of ``mi``).
    arguments: dict[str, Any] = Field(default_factory=dict)


class LossSection(Section):
    """Segmentation models: Dice + cross-entropy (``monai.losses.DiceCELoss`` on softmax outputs) with their
    weights, or seed 000's class-pooled Dice + softmax focal loss (``name: dice_focal``,
    :class:`MRITRUSFusionLib.losses.dice_focal.PooledDiceFocalLoss`). Registration models, and the tumour
    models with dict outputs (``reg-enhanced``, ``csad``): the weighted sum of ``terms`` (``name: terms``).
    Rigid-parameter regression (``attention-reg``): mean squared error on the 6 parameters, mm and degrees
    (``name: mse``)."""

    name: Literal["dice_ce", "dice_focal", "terms", "mse"] = "dice_ce"
    lambda_dice: float = Field(1.0, ge=0)
    lambda_ce: float = Field(1.0, ge=0)
    #: ``dice_focal``: factor ``α`` and focusing exponent ``γ`` of the focal term.
    lambda_focal: float = Field(1.0, ge=0)
    focal_gamma: float = Field(2.0, ge=0)
    terms: list[LossTerm] = Field(default_factory=list)


class AffineAugmentation(Section):
    """``monai.transforms.RandAffined``: rotation (±deg about each axis), scale (±fraction), shift (±mm)."""

    probability: float = Field(0.0, ge=0, le=1)
    rotate_deg: float = Field(10.0, ge=0)
    scale: float = Field(0.1, ge=0, lt=1)
    translate_mm: float = Field(5.0, ge=0)


class ElasticAugmentation(Section):
    """``monai.transforms.Rand3DElasticd``: smoothing sigma and displacement magnitude ranges (mm)."""

    probability: float = Field(0.0, ge=0, le=1)
    sigma_mm: tuple[float, float] = (10.0, 15.0)
    magnitude_mm: tuple[float, float] = (1.0, 4.0)

    @field_validator("sigma_mm", "magnitude_mm", mode="before")
    @classmethod
    def _two(cls, value: Any) -> Any:
        return check_length(value, 2, "[low, high]")


class IntensityAugmentation(Section):
    """Image-only: random scale (``1 ± scale``), shift (``± shift``) and Gaussian noise (``noise_std``)."""

    probability: float = Field(0.0, ge=0, le=1)
    scale: float = Field(0.1, ge=0)
    shift: float = Field(0.1, ge=0)
    noise_std: float = Field(0.05, ge=0)


class AugmentationSection(Section):
    """MONAI dictionary transforms applied to each patch; spatial ones move images and labels together
    (labels, and the landmarks among their channels, with nearest-neighbour interpolation). Off by default."""

    affine: AffineAugmentation = Field(default_factory=AffineAugmentation)
    elastic: ElasticAugmentation = Field(default_factory=ElasticAugmentation)
    intensity: IntensityAugmentation = Field(default_factory=IntensityAugmentation)
    #: Image axes (ITK order: 0 = i/L, 1 = j/P, 2 = k/S) flipped with probability 0.5 each.
    flip_axes: list[Literal[0, 1, 2]] = Field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return bool(self.flip_axes) or any(part.probability > 0 for part in (self.affine, self.elastic,
                                                                                self.intensity))


class OptimiserSection(Section):
    """Optimiser and learning-rate schedule (per phase: the schedule restarts with each phase)."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    #: SGD momentum (ignored by Adam/AdamW).
    momentum: float = Field(0.9, ge=0, lt=1)
    #: ``constant``, ``poly`` (``(1 - t/T)^0.9``) or ``cosine`` decay to 0 over each phase.
    schedule: Literal["constant", "poly", "cosine"] = "poly"
    #: Linear warm-up from 0 over the first iterations of each phase.
    warmup_iterations: int = Field(0, ge=0)
    #: Length in steps of the ``poly``/``cosine`` decay (None: each phase's length); a longer one ends the
    #: run part-way down the curve, a shorter one holds the end value.
    schedule_iterations: Optional[int] = Field(None, ge=1)


class ValidationSection(Section):
    """What validation scores: phantom ``seeds`` (default phantom configuration) and/or the file source's
    ``validation_cases``; ``metric`` picks the best checkpoint (``dice``: higher is better; ``loss`` and, for
    registration models, mean landmark ``tre`` in mm: lower; for ``attention-reg``, ``sre``: mean surface
    registration error in mm after the iterative refinement, lower, with ``seeds`` rigid phantom pairs)."""

    seeds: list[int] = Field(default_factory=list)
    metric: Literal["dice", "tre", "loss", "sre"] = "dice"

    @field_validator("seeds")
    @classmethod
    def _not_held_out(cls, seeds: list[int]) -> list[int]:
        clash = sorted(set(seeds) & set(HELD_OUT_PHANTOM_SEEDS))
        if clash:
            raise ValueError(f"seeds {clash} are held-out phantom seeds")
        return seeds


class PhaseSection(Section):
    """One phase of a multi-phase schedule (e.g. seed 000: pre-train registration, then segmentation).

    ``trainable`` and ``frozen`` are parameter-name prefixes of the network (``model.0``, ``registration``...);
    with ``trainable`` given every other parameter is frozen, ``frozen`` freezes on top of that.
    """

    name: str = ""
    iterations: int = Field(ge=1)
    trainable: list[str] = Field(default_factory=list)
    frozen: list[str] = Field(default_factory=list)
    #: Factor on ``optimiser.lr`` during this phase.
    lr_scale: float = Field(1.0, gt=0)
    #: Loss of this phase (default: the top-level ``loss``).
    loss: Optional[LossSection] = None


class TrainingConfig(Section):
    """A training run. Geometry: ``patch_size`` in voxels (i, j, k), ``spacing_mm`` isotropic in mm."""

    model: ModelSection = Field(default_factory=ModelSection)
    loss: LossSection = Field(default_factory=LossSection)
    data: DataSection = Field(default_factory=PhantomDataSection)
    augmentation: AugmentationSection = Field(default_factory=AugmentationSection)
    optimiser: OptimiserSection = Field(default_factory=OptimiserSection)
    validation: ValidationSection = Field(default_factory=ValidationSection)
    #: Phases run in order; empty = one phase of ``iterations`` training every parameter.
    phases: list[PhaseSection] = Field(default_factory=list)
    patch_size: tuple[int, int, int] = (64, 64, 64)
    spacing_mm: float = Field(0.8, gt=0)
    #: Optimiser steps in total (with ``phases``: their sum, may be left out).
    iterations: int = Field(600, ge=1)
    #: Global batch: split evenly over the processes of a distributed run.
    batch_size: int = Field(2, ge=1)
    seed: int = 0
    #: A deep ensemble (segmentation models): one full run per seed, in ``<run_dir>/seed-S``, packed into one
    #: checkpoint whose network averages the members' class probabilities; empty: one model trained with ``seed``.
    ensemble_seeds: list[int] = Field(default_factory=list)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Mixed precision (CUDA only; ignored on CPU).
    amp: bool = False
    #: Clip the gradient norm to this value (None: no clipping).
    grad_clip: Optional[float] = Field(None, gt=0)
    #: Validate every this many steps (0: only at the end); needs validation seeds or cases.
    validate_every: int = Field(0, ge=0)
    #: Write ``last.pt`` every this many steps (0: only at the end and when stopped).
    checkpoint_every: int = Field(50, ge=0)
    #: Inference checkpoint written at the end (relative paths: to the working directory).
    output: Path = Path("runs/trus-unet/trus-unet.pt")
    #: Folder of ``last.pt``, ``best.pt``, ``history.json`` and ``tensorboard/``; default ``<output>.run``.
    run_dir: Optional[Path] = None
    #: Log the running loss and throughput every this many iterations (0 = only at the end).
    log_every: int = Field(50, ge=0)

    @field_validator("data", mode="before")
    @classmethod
    def _default_source(cls, value: Any) -> Any:
        return data_source_default(value)

    @field_validator("patch_size", mode="before")
    @classmethod
    def _three(cls, value: Any) -> Any:
        return check_length(value, 3, "[i, j, k] in voxels")

    @field_validator("patch_size")
    @classmethod
    def _positive(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(value) < 1:
            raise ValueError(f"patch_size must be positive voxel counts, got {list(value)}")
        return value

    @field_validator("ensemble_seeds")
    @classmethod
    def _members(cls, seeds: list[int]) -> list[int]:
        if seeds and (len(seeds) < 2 or len(set(seeds)) != len(seeds)):
            raise ValueError(f"an ensemble needs two or more different seeds, got {seeds}")
        return seeds

    @model_validator(mode="after")
    def _phase_iterations(self) -> "TrainingConfig":
        if not self.phases:
            return self
        total = sum(phase.iterations for phase in self.phases)
        if "iterations" in self.model_fields_set and self.iterations != total:
            raise ValueError(f"key 'iterations': {self.iterations} differs from the sum of "
                             f"phases[*].iterations ({total}); leave it out or make them agree")
        self.iterations = total
        return self

    def resolved_run_dir(self, output: Optional[Path] = None) -> Path:
        """``run_dir``, or ``<output without suffix>.run`` next to the checkpoint ``output``."""
        if self.run_dir is not None:
            return self.run_dir
        output = Path(output) if output is not None else self.output
        return output.parent / f"{output.name.split('.')[0]}.run"


def _key(location: tuple) -> str:
    """Dotted key of a pydantic error location (list indices as ``[i]``, data-source tags dropped)."""
    if len(location) > 1 and location[0] == "data" and location[1] in DATA_SOURCES:
        location = location[:1] + location[2:]
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _describe(error: ValidationError) -> str:
    """One line summarising every problem of ``error``, each naming its key."""
    problems = []
    for item in error.errors():
        key = _key(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown key '{key}'")
        elif item["type"] == "union_tag_invalid":
            problems.append(f"key '{key}.source': unknown data source {item['input'].get('source')!r}; "
                            f"expected one of {', '.join(DATA_SOURCES)}")
        elif not key:
            problems.append(message)
        else:
            problems.append(f"key '{key}': {message} (got {item.get('input')!r})")
    return "; ".join(problems)


def config_from_dict(values: Any, source: str = "config", check_model: bool = True) -> TrainingConfig:
    """Validate ``values`` (a mapping, e.g. parsed YAML) into a :class:`TrainingConfig`.

    Args:
        values: the configuration.
        source: what the error messages start with.
        check_model: also check that ``model.name`` is known (imports torch; see :func:`check_model_name`).

    Raises:
        InputError: ``<source>: <problem naming the key>``.
    """
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise InputError(f"{source}: expected a mapping of keys, got {type(values).__name__}")
    try:
        config = TrainingConfig.model_validate(values)
    except ValidationError as error:
        raise InputError(f"{source}: {_describe(error)}") from None
    if check_model:
        check_model_name(config, source)
    return config


def load_config(path: str | os.PathLike, check_model: bool = True) -> TrainingConfig:
    """Read and validate the YAML training configuration at ``path`` (``check_model``: as
    :func:`config_from_dict`).

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
    return config_from_dict(values, source=f"config {path}", check_model=check_model)


def as_config(config: "TrainingConfig | dict | str | os.PathLike") -> TrainingConfig:
    """A :class:`TrainingConfig` from a config object, a mapping or a YAML path."""
    if isinstance(config, TrainingConfig):
        return config
    if isinstance(config, dict):
        return config_from_dict(config)
    return load_config(config)
