"""Training of the ``gland-strain`` model (:mod:`MRITRUSFusionLib.registration.gland_strain`): a closed-form fit
on the training cases' true gland masks, not an optimiser loop, reached through the same ``train`` command.

Only ``data`` (a file source with label files: channel 0 gland, 1.. landmarks) and ``output`` of the config are
read. Validation measures what ``auto`` gains from the strain: on each validation case, the gland-driven rigid
on the glands the bundled gland models predict (the true masks when those models are not installed), and the
landmark TRE after the rigid alone and after rigid ∘ strain; both are logged and kept in the model file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import read_label_channels, read_volume
from ..progress import stage
from ..registration.classical import register_classical
from ..metrics.landmarks import landmark_tre_mm
from ..registration.gland_strain import GlandStrain, fit_gland_strain
from .data_config import FileDataSection
from .file_data import list_cases

log = logging.getLogger("MRITRUSFusionLib.training")


def _read_case(case) -> tuple:
    """(TRUS, MRI, TRUS label channels, MRI label channels) of a case; channel 0 is the gland, 1.. landmarks."""
    if case.fixed_label is None or case.moving_label is None:
        raise InputError(f"case {case.name}: gland-strain needs both label files (fixed and moving)")
    return (read_volume(case.fixed_image, name=f"{case.name} fixed image"),
            read_volume(case.moving_image, name=f"{case.name} moving image"),
            read_label_channels(case.fixed_label, name=f"{case.name} fixed label"),
            read_label_channels(case.moving_label, name=f"{case.name} moving label"))


def _training_pairs(cases):
    """(TRUS, MRI, TRUS gland, MRI gland) of each training case, with a progress bar."""
    with stage("fit gland strain", total=len(cases)) as bar:
        for case in cases:
            fixed, moving, fixed_labels, moving_labels = _read_case(case)
            yield fixed, moving, fixed_labels[0], moving_labels[0]
            bar.advance(message=case.name)


def validate_gland_strain(strain: GlandStrain, cases) -> dict:
    """Median and mean landmark TRE (mm) of the validation ``cases`` after the rigid and after rigid ∘ strain,
    and which glands the rigid used (``predicted`` or ``true``). Cases whose predicted glands are implausible
    are skipped and named (``auto`` does not use the strain on them)."""
    from ..registration.methods import gland_models_present, implausible_glands, predicted_glands

    source = "predicted" if gland_models_present() else "true"
    before, after, skipped = [], [], []
    with stage("validate gland strain", total=len(cases)) as bar:
        for case in cases:
            bar.advance(message=case.name)
            fixed, moving, fixed_labels, moving_labels = _read_case(case)
            fixed_mask, moving_mask = fixed_labels[0], moving_labels[0]
            if source == "predicted":
                fixed_mask, moving_mask = predicted_glands(fixed, moving, device="cpu")
                if implausible_glands(fixed_mask, moving_mask):  # auto pre-aligns otherwise: no strain
                    skipped.append(case.name)
                    continue
            rigid = register_classical(fixed, moving, "rigid", fixed_mask, moving_mask)
            before.extend(landmark_tre_mm(fixed_labels[1:], moving_labels[1:], rigid))
            after.extend(landmark_tre_mm(fixed_labels[1:], moving_labels[1:], strain.after(rigid, fixed_mask)))
    report = {"glands": source, "cases": len(cases) - len(skipped), "skipped_implausible_glands": skipped,
              "landmarks": len(before)}
    if before:
        report.update(rigid_tre_median_mm=float(np.median(before)), rigid_tre_mean_mm=float(np.mean(before)),
                      strain_tre_median_mm=float(np.median(after)), strain_tre_mean_mm=float(np.mean(after)))
    return report


def train_gland_strain(config, target: Path) -> Path:
    """Fit the gland strain of ``config.data``'s training cases, validate it, write it to ``target`` (JSON).

    Raises:
        InputError: a data source without files and labels, or no training case.
    """
    if not isinstance(config.data, FileDataSection):
        raise InputError(f"config key 'data.source': gland-strain is fitted on true gland masks of files "
                         f"(deepreg, muregpro or manifest), not '{config.data.source}'")
    lists = list_cases(config.data)
    strain = fit_gland_strain(_training_pairs(lists.training))
    log.info("gland strain of %d training cases: S = %s (LPS)", strain.cases, np.round(strain.matrix, 3).tolist())
    report = validate_gland_strain(strain, lists.validation) if lists.validation else {}
    if report.get("landmarks"):
        log.info("validation (%d cases, %s glands): landmark TRE median/mean %.2f/%.2f mm after the rigid, "
                 "%.2f/%.2f mm after rigid + strain", report["cases"], report["glands"],
                 report["rigid_tre_median_mm"], report["rigid_tre_mean_mm"], report["strain_tre_median_mm"],
                 report["strain_tre_mean_mm"])
    return GlandStrain(strain.log_strain, strain.cases, report).save(target)
