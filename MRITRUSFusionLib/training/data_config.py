"""The ``data`` section of a training config: synthetic phantoms, files in one of the three dataset layouts, or
Attention-Reg's perturbed pairs.

``source`` picks the kind: ``phantom`` (default; an endless stream of patches from generated cases),
``deepreg`` (paired layout), ``muregpro`` (``train``/``val`` splits; ``holdout`` is refused), ``manifest``
(a CSV, see :func:`MRITRUSFusionLib.io.manifest_cases`) or ``attention-reg-sample`` (Attention-Reg's rigid
perturbations of the authors' sample and of rigid phantoms, :class:`AttentionRegSampleDataSection`). File
sources select cases by name or numbered range (``obs000-obs079``) and refuse any selection that touches their
``held_out`` patterns, by default the held-out test set ``obs080-obs107`` of ``mrus-example``.

Relative paths are taken from the working directory. Whether ``path`` exists is checked by
:func:`check_data_paths` when training starts (before any work), so configs stay loadable everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..errors import InputError
from .case_names import HELD_OUT_CASES, drop, first_overlap, names_of, parse_patterns

#: Phantom seeds kept for held-out evaluation: training and validation never use them.
HELD_OUT_PHANTOM_SEEDS = range(1000, 1100)
#: Folder name of the shared example dataset whose test set (:data:`HELD_OUT_CASES`) is always held out.
MRUS_EXAMPLE = "mrus-example"
#: Values of ``data.source``.
DATA_SOURCES = ("phantom", "deepreg", "muregpro", "manifest", "attention-reg-sample")
#: Case numbers of the Attention-Reg sample (``init{k}`` folders) by split; ``test`` is never trained or tuned on.
ATTENTION_REG_SAMPLE_SPLITS = {"train": (1, 2, 3, 4, 5, 6), "val": (7, 8), "test": (0, 9)}
#: Case roles every layout provides (further extras folders or manifest columns may be named too).
STANDARD_ROLES = ("fixed_image", "moving_image", "fixed_label", "moving_label")


class Section(BaseModel):
    """A config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def check_length(value: Any, length: int, meaning: str) -> Any:
    """``value`` unchanged, or ValueError when it is a list/tuple of another length (before parsing)."""
    if isinstance(value, (list, tuple)) and len(value) != length:
        raise ValueError(f"expected {length} values {meaning}, got {len(value)}")
    return value


def check_ordered(value: tuple, key: str) -> tuple:
    """``value`` unchanged, or ValueError unless ``value[0] <= value[1]``."""
    if value[0] > value[1]:
        raise ValueError(f"{key} must be [low, high] with low <= high, got {list(value)}")
    return value


class PhantomDataSection(Section):
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
    #: Registration models only: ``ground-truth`` resamples each phantom MRI through its known transform, so
    #: pairs are aligned before augmentation (what the seed-003 ``intra-modal`` loss term needs).
    prealign: Literal["none", "ground-truth"] = "none"
    #: Phantom grids (voxels, mm per voxel, ITK i/j/k order); None keeps the phantom defaults.
    trus_size: Optional[tuple[int, int, int]] = None
    trus_spacing: Optional[tuple[float, float, float]] = None
    mri_size: Optional[tuple[int, int, int]] = None
    mri_spacing: Optional[tuple[float, float, float]] = None
    #: Models putting the MRI on the TRUS grid (``concat``, ``reg-enhanced``): the MRI is resampled through the
    #: true transform composed with a random rigid error about the grid centre, drawn per sample: a translation
    #: of length uniform in [0, ``mri_misalignment_mm``] in a random direction and rotations uniform in
    #: ±``mri_misalignment_deg`` about each axis (0, 0: the true transform, a perfect registration).
    mri_misalignment_mm: float = Field(0.0, ge=0)
    mri_misalignment_deg: float = Field(0.0, ge=0)

    @field_validator("n_tumours", "tumour_echogenicity", "tumour_radius_mm", "gland_scale", "intensity_scale",
                     mode="before")
    @classmethod
    def _two(cls, value: Any) -> Any:
        return check_length(value, 2, "[low, high]")

    @field_validator("trus_size", "trus_spacing", "mri_size", "mri_spacing", mode="before")
    @classmethod
    def _three(cls, value: Any) -> Any:
        return check_length(value, 3, "[i, j, k]")

    @field_validator("trus_size", "trus_spacing", "mri_size", "mri_spacing")
    @classmethod
    def _positive(cls, value: Optional[tuple], info: ValidationInfo) -> Optional[tuple]:
        if value is not None and min(value) <= 0:
            raise ValueError(f"{info.field_name} must be positive, got {list(value)}")
        return value

    @field_validator("n_tumours", "tumour_echogenicity", "tumour_radius_mm", "gland_scale", "intensity_scale")
    @classmethod
    def _pair(cls, value: tuple, info: ValidationInfo) -> tuple:
        return check_ordered(value, info.field_name)

    @model_validator(mode="after")
    def _no_held_out_seeds(self) -> "PhantomDataSection":
        used = range(self.seed_start, self.seed_start + self.count)
        if set(used) & set(HELD_OUT_PHANTOM_SEEDS):
            raise ValueError(f"seeds {used.start}..{used.stop - 1} overlap the held-out phantom seeds "
                             f"{HELD_OUT_PHANTOM_SEEDS.start}..{HELD_OUT_PHANTOM_SEEDS.stop - 1}")
        return self


class FileDataSection(Section):
    """Cases read from files; every role is resampled onto the grid of ``reference`` at the training spacing.

    Images are z-score normalised; labels are multi-channel binary masks (channel 0 gland, 1.. landmarks),
    so spatial augmentation moves landmarks with the images.
    """

    path: Path
    #: Case-name patterns never used (checked against ``cases`` and ``validation_cases``, and dropped).
    held_out: list[str] = Field(default_factory=lambda: list(HELD_OUT_CASES))
    #: Training cases (names or ranges); empty = every case that is neither held out nor for validation.
    cases: list[str] = Field(default_factory=list)
    #: Validation cases (names or ranges); scored every ``validate_every`` steps.
    validation_cases: list[str] = Field(default_factory=list)
    #: Roles stacked as input channels (``fixed_image``, ``moving_image`` or an extras folder/column).
    image: list[str] = Field(default_factory=lambda: ["fixed_image"], min_length=1)
    #: Role holding the training target, and its channel (0 = gland for μ-RegPro/DeepReg label files).
    label: str = "fixed_label"
    label_channel: int = Field(0, ge=0)
    #: Role whose grid every role is resampled onto (at ``spacing_mm``).
    reference: str = "fixed_image"
    #: Role whose channel 0 (the gland) bounds the crop, and the margin kept around it (mm); None: no crop.
    crop_around: Optional[str] = "fixed_label"
    crop_margin_mm: float = Field(10.0, ge=0)
    #: ``zscore``, ``zscore-foreground`` (voxels > 0), ``zscore-gland`` (inside ``crop_around`` channel 0);
    #: None: the model's own normalisation.
    normalisation: Optional[Literal["zscore", "zscore-foreground", "zscore-gland"]] = None
    #: Fraction of patches centred on a target voxel (``monai.transforms.RandCropByPosNegLabeld``).
    foreground_fraction: float = Field(0.7, ge=0, le=1)
    #: Fraction of prepared cases kept in memory (``monai.data.CacheDataset``), and loader worker processes.
    cache_rate: float = Field(1.0, ge=0, le=1)
    num_workers: int = Field(0, ge=0)
    #: Registration models only: pre-align each MRI before training (a deformable model then learns the
    #: residual): ``gland-affine`` = the classical gland-driven affine on the true masks; ``auto-gland`` = what
    #: ``--method auto`` runs before its learned stage when the user has no masks (gland-driven rigid on glands
    #: predicted by the bundled gland models, then the bundled gland strain; see
    #: ``registration.methods.gland_prealignment``).
    prealign: Literal["none", "gland-affine", "auto-gland"] = "none"

    @field_validator("held_out", "cases", "validation_cases")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        parse_patterns(value)  # ValueError on a malformed pattern
        return value

    @field_validator("cases", "validation_cases")
    @classmethod
    def _not_held_out(cls, value: list[str], info: ValidationInfo) -> list[str]:
        clash = first_overlap(value, info.data.get("held_out", []))
        if clash:
            raise ValueError(f"'{clash[0]}' includes held-out case(s) '{clash[1]}': never train, tune or "
                             f"pick models on them")
        if info.field_name == "validation_cases":
            both = first_overlap(info.data.get("cases", []), value)
            if both:
                raise ValueError(f"'{both[1]}' is also a training case ('{both[0]}' in data.cases)")
        return value

    @field_validator("held_out")
    @classmethod
    def _test_set_stays_out(cls, value: list[str], info: ValidationInfo) -> list[str]:
        """``mrus-example``'s test set stays held out, whatever ``held_out`` says."""
        path = info.data.get("path")
        if path is not None and MRUS_EXAMPLE in Path(path).parts:
            missing = drop(names_of(HELD_OUT_CASES), value)
            if missing:
                raise ValueError(f"{MRUS_EXAMPLE}'s test set {', '.join(HELD_OUT_CASES)} must stay held out "
                                 f"({missing[0]} is not)")
        return value

    @property
    def roles(self) -> list[str]:
        """Every role read for a case, in order (images, target, reference, crop), without repeats."""
        roles = [*self.image, self.label, self.reference] + ([self.crop_around] if self.crop_around else [])
        return list(dict.fromkeys(roles))

    def is_label(self, role: str) -> bool:
        """Whether ``role`` is read as label channels (the target, the crop role, or a ``*label*`` role)."""
        return role not in self.image and (role in (self.label, self.crop_around) or "label" in role)


class DeepRegDataSection(FileDataSection):
    """The DeepReg paired layout ``{fixed_images,moving_images,fixed_labels,moving_labels}/NAME.nii.gz``."""

    source: Literal["deepreg"]


class MuRegProDataSection(FileDataSection):
    """One split of the μ-RegPro layout (``train`` or ``val``; ``holdout`` is for reported results only)."""

    source: Literal["muregpro"]
    split: str = "train"
    #: Split whose cases validate (besides ``validation_cases``); None: none.
    validation_split: Optional[str] = None

    @field_validator("split", "validation_split")
    @classmethod
    def _not_holdout(cls, value: Optional[str]) -> Optional[str]:
        if value == "holdout":
            raise ValueError("the holdout split is for reported results only; train on 'train', validate on 'val'")
        if value is not None and value not in ("train", "val"):
            raise ValueError(f"unknown split {value!r}; use 'train' or 'val'")
        return value


class ManifestDataSection(FileDataSection):
    """A CSV manifest, one row per case (columns ``name``, ``fixed_image``, ``moving_image``, ...)."""

    source: Literal["manifest"]


class AttentionRegSampleDataSection(Section):
    """Attention-Reg (seed 002) training pairs: each item a random rigid perturbation of the truth of one source
    (a case of the authors' sample or a rigid phantom pair), drawn uniformly within ±``max_translation_mm`` /
    ±``max_rotation_deg`` and rescaled to an SRE uniform in [0, ``max_sre_mm``] on the proxy gland surface,
    the network grid centre jittered by ±``centre_jitter_mm``. Validation starts are fixed: each validation
    case's own start plus ``val_perturbations`` perturbations of SRE uniform in [1, ``max_sre_mm``] mm, scored
    after ``val_stages`` refinement rounds."""

    source: Literal["attention-reg-sample"]
    #: The sample folder; None: ``$MRITRUS_ATTENTION_REG_SAMPLE``, else ``../shared/data/attention-reg-sample``.
    root: Optional[Path] = None
    #: Sample case numbers (0-9) for training and for validation; the test cases 0 and 9 are refused.
    train_cases: list[int] = Field(default_factory=lambda: list(ATTENTION_REG_SAMPLE_SPLITS["train"]))
    val_cases: list[int] = Field(default_factory=lambda: list(ATTENTION_REG_SAMPLE_SPLITS["val"]))
    #: Seeds of rigid phantom pairs added to training (validation phantoms: ``validation.seeds``).
    phantom_seeds: list[int] = Field(default_factory=list)
    max_sre_mm: float = Field(20.0, gt=0)
    max_translation_mm: float = Field(5.0, ge=0)
    max_rotation_deg: float = Field(6.0, ge=0)
    centre_jitter_mm: float = Field(3.0, ge=0)
    #: Seeded perturbations per validation case, on top of the case's own start (sample cases).
    val_perturbations: int = Field(4, ge=0)
    #: Refinement rounds when scoring validation (stage ``n`` runs network ``min(n, stages - 1)``).
    val_stages: int = Field(2, ge=1)

    @field_validator("train_cases", "val_cases")
    @classmethod
    def _sample_cases(cls, value: list[int], info: ValidationInfo) -> list[int]:
        unknown = sorted(set(value) - set(range(10)))
        if unknown:
            raise ValueError(f"sample cases are numbered 0-9, got {unknown}")
        test = sorted(set(value) & set(ATTENTION_REG_SAMPLE_SPLITS["test"]))
        if test:
            raise ValueError(f"test case(s) {test} of the sample are held out (test split "
                             f"{list(ATTENTION_REG_SAMPLE_SPLITS['test'])}): never train, tune or pick models on them")
        both = sorted(set(value) & set(info.data.get("train_cases", []))) if info.field_name == "val_cases" else []
        if both:
            raise ValueError(f"case(s) {both} are also training cases (data.train_cases)")
        return value

    @field_validator("phantom_seeds")
    @classmethod
    def _not_held_out(cls, value: list[int]) -> list[int]:
        clash = sorted(set(value) & set(HELD_OUT_PHANTOM_SEEDS))
        if clash:
            raise ValueError(f"seeds {clash} are held-out phantom seeds")
        return value

    @model_validator(mode="after")
    def _some_training_source(self) -> "AttentionRegSampleDataSection":
        if not self.train_cases and not self.phantom_seeds:
            raise ValueError("no training source: give train_cases and/or phantom_seeds")
        return self


def data_source_default(value: Any) -> Any:
    """A ``data`` mapping without ``source`` is a phantom section."""
    if isinstance(value, dict) and "source" not in value:
        return {**value, "source": "phantom"}
    return value


def check_data_paths(data: BaseModel) -> None:
    """Raise :class:`InputError` naming ``data.path`` (and the split) when a file source is not there.

    Cheap (a few ``stat`` calls): runs before any training work.
    """
    if not isinstance(data, FileDataSection):
        return
    path = data.path
    if not path.exists():
        raise InputError(f"config key 'data.path': {path}: no such file or folder")
    if isinstance(data, ManifestDataSection) and not path.is_file():
        raise InputError(f"config key 'data.path': {path}: a manifest must be a .csv file")
    if isinstance(data, DeepRegDataSection) and not (path / "fixed_images").is_dir():
        raise InputError(f"config key 'data.path': {path}: no fixed_images/ folder (DeepReg paired layout)")
    if isinstance(data, MuRegProDataSection):
        for key in ("split", "validation_split"):
            split = getattr(data, key)
            if split is not None and not (path / split).is_dir():
                raise InputError(f"config key 'data.{key}': {path / split}: no such folder (μ-RegPro layout)")
