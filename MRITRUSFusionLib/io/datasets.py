"""Dataset layouts as lists of cases: DeepReg paired, μ-RegPro, and a CSV manifest. Fixed = TRUS, moving = MRI.

Only paths are listed here; images are read later with :mod:`.volumes` and :mod:`.labels`.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .atomic import full_suffix

MUREGPRO_SPLITS = ("train", "val", "holdout")
#: Folder of each role in the DeepReg paired layout and in one μ-RegPro split.
DEEPREG_FOLDERS = {"fixed_image": "fixed_images", "moving_image": "moving_images",
                   "fixed_label": "fixed_labels", "moving_label": "moving_labels"}
MUREGPRO_FOLDERS = {"fixed_image": "us_images", "moving_image": "mr_images",
                    "fixed_label": "us_labels", "moving_label": "mr_labels"}
MANIFEST_COLUMNS = ("name", "fixed_image", "moving_image", "fixed_label", "moving_label")


@dataclass
class Case:
    """One MRI–TRUS pair: paths of its images, optional labels, and any further files under ``extras``."""

    name: str
    fixed_image: Path
    moving_image: Path
    fixed_label: Path | None = None
    moving_label: Path | None = None
    extras: dict[str, Path] = field(default_factory=dict)


def case_name(path: Path) -> str:
    """File name without its format suffix: ``obs000.nii.gz`` -> ``obs000``, ``obs000.h5`` -> ``obs000``."""
    suffix = full_suffix(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def _files_by_case(folder: Path) -> dict[str, Path]:
    """Case name -> path of the non-hidden entries of ``folder`` (files, or DICOM series folders)."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        name = case_name(path)
        if name in files:
            raise InputError(f"{folder}: two files for case {name}: {files[name].name} and {path.name}")
        files[name] = path
    return files


def _folder_cases(root: Path, folders: dict[str, str]) -> list[Case]:
    """Cases of a layout with one folder per role under ``root``; other sub-folders become extras."""
    for role in ("fixed_image", "moving_image"):
        if not (root / folders[role]).is_dir():
            raise InputError(f"{root}: no {folders[role]}/ folder")
    by_folder = {sub.name: _files_by_case(sub) for sub in sorted(root.iterdir())
                 if sub.is_dir() and not sub.name.startswith(".")}
    fixed, moving = by_folder[folders["fixed_image"]], by_folder[folders["moving_image"]]
    unmatched = sorted(set(fixed) ^ set(moving))
    if unmatched:
        raise InputError(f"{root}: case(s) {', '.join(unmatched)} lack a fixed or a moving image")
    extra_folders = set(by_folder) - set(folders.values())
    return [Case(name, fixed[name], moving[name],
                 by_folder.get(folders["fixed_label"], {}).get(name),
                 by_folder.get(folders["moving_label"], {}).get(name),
                 {folder: by_folder[folder][name] for folder in sorted(extra_folders) if name in by_folder[folder]})
            for name in sorted(fixed)]


def deepreg_paired_cases(root: str | os.PathLike) -> list[Case]:
    """Cases of the DeepReg paired layout ``{fixed_images,moving_images,fixed_labels,moving_labels}/NAME.*``.

    Label folders are optional (a case without a label file gets None); any other sub-folder with files
    named after cases (e.g. ``transforms/obs000.h5``) goes into ``Case.extras`` under the folder name.
    Cases are sorted by name.
    """
    return _folder_cases(Path(root), DEEPREG_FOLDERS)


def muregpro_cases(root: str | os.PathLike, split: str) -> list[Case]:
    """Cases of one split of the μ-RegPro layout ``SPLIT/{us_images,mr_images,us_labels,mr_labels}/*.nii.gz``.

    US (TRUS) is fixed and MR is moving; further sub-folders of the split go into ``Case.extras``.
    """
    if split not in MUREGPRO_SPLITS:
        raise InputError(f"{root}: unknown split {split!r}; use one of {', '.join(MUREGPRO_SPLITS)}")
    return _folder_cases(Path(root) / split, MUREGPRO_FOLDERS)


def _manifest_path(csv_path: Path, row_number: int, column: str, value: str) -> Path:
    path = Path(value) if Path(value).is_absolute() else csv_path.parent / value
    if not path.exists():
        raise InputError(f"{csv_path}: row {row_number}, {column}: {path}: no such file")
    return path


def manifest_cases(csv_path: str | os.PathLike) -> list[Case]:
    """Cases listed in a CSV manifest, one row per case, in file order.

    Columns ``name``, ``fixed_image`` and ``moving_image`` are required; ``fixed_label`` and ``moving_label``
    are optional (an empty cell is None); every other non-empty cell goes into ``Case.extras`` under its
    column name. Relative paths are resolved against the folder of the CSV file.

    Raises:
        InputError: missing file or column, empty or repeated case name, or a listed path that does not exist.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError(f"manifest {csv_path}: no such file")
    with csv_path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        missing = [c for c in MANIFEST_COLUMNS[:3] if c not in (reader.fieldnames or ())]
        if missing:
            raise InputError(f"manifest {csv_path}: missing column(s) {', '.join(missing)}")
        rows = list(reader)
    cases: list[Case] = []
    for row_number, row in enumerate(rows, start=2):
        paths = {column: _manifest_path(csv_path, row_number, column, value)
                 for column, value in row.items() if column != "name" and value}
        for required in MANIFEST_COLUMNS[1:3]:
            if required not in paths:
                raise InputError(f"manifest {csv_path}: row {row_number}: empty {required}")
        if not row["name"] or row["name"] in {case.name for case in cases}:
            raise InputError(f"manifest {csv_path}: row {row_number}: empty or repeated name {row['name']!r}")
        cases.append(Case(row["name"], paths.pop("fixed_image"), paths.pop("moving_image"),
                          paths.pop("fixed_label", None), paths.pop("moving_label", None), paths))
    return cases


def open_dataset(path: str | os.PathLike, split: str | None = None) -> list[Case]:
    """Cases of the dataset at ``path``, its layout detected.

    - a folder with ``fixed_images/``: DeepReg paired layout;
    - a folder with ``train/``, ``val/`` or ``holdout/``: μ-RegPro; ``split`` picks one, None takes every split
      present (in the order train, val, holdout);
    - a ``.csv`` file: manifest.

    Raises:
        InputError: missing path, unknown layout, or ``split`` given for a layout without splits.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"dataset {path}: no such file or folder")
    if path.is_dir() and any((path / s).is_dir() for s in MUREGPRO_SPLITS):
        splits = [split] if split else [s for s in MUREGPRO_SPLITS if (path / s).is_dir()]
        return [case for s in splits for case in muregpro_cases(path, s)]
    if split is not None:
        raise InputError(f"dataset {path}: split {split!r} given, but only the μ-RegPro layout has splits")
    if path.is_dir() and (path / DEEPREG_FOLDERS["fixed_image"]).is_dir():
        return deepreg_paired_cases(path)
    if path.is_file() and full_suffix(path) == ".csv":
        return manifest_cases(path)
    raise InputError(f"dataset {path}: unknown layout; expected a folder with fixed_images/ (DeepReg), "
                     f"with train/, val/ or holdout/ (μ-RegPro), or a .csv manifest")
