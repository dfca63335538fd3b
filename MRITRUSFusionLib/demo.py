"""The end-to-end job of ``mritrus-fusion demo``: register MRI onto TRUS, segment the tumour on TRUS, fuse,
evaluate, and write every output of the contract into one folder.

Inputs are a built-in phantom case (default, with full ground truth) or the user's own volumes, optionally
with 4D label channels (channel 0 gland, 1.. landmarks) that drive the registration and are evaluated.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import SimpleITK as sitk

from . import __version__
from .errors import InputError, OutputExistsError
from .fusion import write_overlay_png
from .io import Segment, write_json, write_seg_nrrd, write_transform, write_volume
from .metrics.overlap import volume_ml
from .metrics.registration import registration_metrics, warp_mask
from .metrics.segmentation import segmentation_metrics
from .registration.classical import register_classical
from .registration.warp import warp_image

#: Files the demo writes (ARCHITECTURE.md); the transform suffix follows its kind (.tfm linear, .h5 otherwise).
REPORT, OVERLAY, WARPED, SEGMENTATION = "report.json", "overlay.png", "mri_in_trus.nii.gz", "tumor_seg.seg.nrrd"
TUMOUR_SEGMENT = Segment("tumour", 1, (0.9, 0.2, 0.2))


@dataclass
class DemoInputs:
    """One MRI–TRUS pair; label channels (channel 0 gland, 1.. landmarks) and the tumour truth are optional."""

    trus: sitk.Image
    mri: sitk.Image
    trus_labels: list[sitk.Image] = field(default_factory=list)
    mri_labels: list[sitk.Image] = field(default_factory=list)
    trus_tumours: Optional[sitk.Image] = None
    source: str = "phantom"


@dataclass
class DemoResult:
    """Paths written and the report (also in ``report.json``)."""

    files: dict[str, Path]
    report: dict


@contextlib.contextmanager
def _timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall-clock seconds of the block under ``name``, for ``timings_s`` in the report."""
    start = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - start, 3)


def phantom_inputs(seed: int = 0) -> DemoInputs:
    """The built-in synthetic case (see :mod:`MRITRUSFusionLib.phantom`) with its ground truth."""
    from .phantom import generate_phantom

    case = generate_phantom(seed=seed)
    return DemoInputs(case.trus, case.mri, case.trus_labels, case.mri_labels, case.trus_tumours,
                      source=f"phantom seed {seed}")


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse to replace an earlier demo's outputs in ``out`` unless ``overwrite``."""
    if not overwrite and (out / REPORT).exists():
        raise OutputExistsError(f"{out}: holds an earlier {REPORT} (pass --overwrite to replace it)")


def run_demo(inputs: DemoInputs, out: str | Path, method: str = "bspline", model: str = "trus-unet",
             weights: Optional[str | Path] = None, device: str = "auto", overwrite: bool = False) -> DemoResult:
    """Register, segment, fuse and evaluate ``inputs``; write the outputs into ``out``.

    Registration is gland-driven when both gland masks (label channel 0) are present, image-only otherwise.
    The segmentation model is loaded first (bad weights or device fail before any work), and everything is
    computed before the first file is written, so a failure leaves no partial output.
    """
    from .segmentation.inference import segment_trus
    from .segmentation.models import load_model

    out = Path(out)
    check_output_folder(out, overwrite)
    seconds: dict[str, float] = {}
    with _timed(seconds, "load"):
        loaded = load_model(model, weights, device)
    masks = _gland_masks(inputs)
    with _timed(seconds, "register"):
        transform = register_classical(inputs.trus, inputs.mri, method, *masks)
    with _timed(seconds, "warp"):
        mri_in_trus = warp_image(inputs.mri, inputs.trus, transform)
        mri_before = warp_image(inputs.mri, inputs.trus, sitk.Transform())
    with _timed(seconds, "segment"):
        tumour = segment_trus(inputs.trus, model=loaded)
    with _timed(seconds, "evaluate"):
        report = _report(inputs, transform, tumour, method, model, gland_driven=masks[0] is not None)
    with _timed(seconds, "write"):
        files = _write_outputs(out, inputs, transform, mri_before, mri_in_trus, tumour, overwrite=True)
    report["timings_s"] = {**seconds, "total": round(sum(seconds.values()), 3)}
    report["files"] = {key: path.name for key, path in files.items()}
    files["report"] = write_json(report, out / REPORT)
    return DemoResult(files, report)


def _gland_masks(inputs: DemoInputs) -> tuple[Optional[sitk.Image], Optional[sitk.Image]]:
    if inputs.trus_labels and inputs.mri_labels:
        return inputs.trus_labels[0], inputs.mri_labels[0]
    return None, None


def _report(inputs: DemoInputs, transform: sitk.Transform, tumour: sitk.Image, method: str, model: str,
            gland_driven: bool) -> dict:
    """``report.json`` content: inputs, registration before/after and segmentation metrics."""
    report: dict = {
        "library_version": __version__,
        "input": inputs.source,
        "registration": {"method": method, "mode": "gland-driven" if gland_driven else "image-only"},
        "segmentation": {"model": model, "tumour_volume_ml": round(volume_ml(tumour), 4)},
    }
    if inputs.trus_labels and inputs.mri_labels:
        before = registration_metrics(inputs.trus_labels, inputs.mri_labels, sitk.Transform())
        after = registration_metrics(inputs.trus_labels, inputs.mri_labels, transform)
        report["registration"].update({f"{key}_before": before[key] for key in _SUMMARY_KEYS if key in before})
        report["registration"].update({f"{key}_after": after[key] for key in _SUMMARY_KEYS if key in after})
        report["registration"].update(_renamed_tre(before, after))
        report["registration"]["after"] = after
    if inputs.trus_tumours is not None:
        report["segmentation"].update(segmentation_metrics(tumour, inputs.trus_tumours))
    return report


_SUMMARY_KEYS = ("dice", "hd95_mm", "asd_mm", "folding_fraction")


def _renamed_tre(before: dict, after: dict) -> dict:
    """Mean landmark TRE before/after under the contract's names ``tre_before_mm`` / ``tre_after_mm``."""
    if "tre_mean_mm" not in before:
        return {}
    return {"tre_before_mm": before["tre_mean_mm"], "tre_after_mm": after["tre_mean_mm"],
            "tre_median_after_mm": after["tre_median_mm"]}


def _write_outputs(out: Path, inputs: DemoInputs, transform: sitk.Transform, mri_before: sitk.Image,
                   mri_in_trus: sitk.Image, tumour: sitk.Image, overwrite: bool) -> dict[str, Path]:
    suffix = ".tfm" if transform.IsLinear() else ".h5"
    files = {
        "transform": write_transform(transform, out / f"transform{suffix}", overwrite=overwrite),
        "mri_in_trus": write_volume(mri_in_trus, out / WARPED, overwrite=overwrite),
        "tumor_seg": write_seg_nrrd(tumour, out / SEGMENTATION, [TUMOUR_SEGMENT], overwrite=overwrite),
    }
    files["overlay"] = write_overlay_png(out / OVERLAY, inputs.trus, mri_before, mri_in_trus,
                                         **_contours(inputs, transform, tumour), overwrite=overwrite,
                                         title=f"MRI onto TRUS ({inputs.source})")
    return files


def _contours(inputs: DemoInputs, transform: sitk.Transform, tumour: sitk.Image) -> dict:
    """Outlines for the overlay: TRUS gland and tumour segmentation; MRI gland before/after registration."""
    fixed = {"TRUS tumour (segmented)": tumour}
    if inputs.trus_labels:
        fixed = {"TRUS gland": inputs.trus_labels[0], **fixed}
    if not inputs.mri_labels:
        return {"fixed_contours": fixed}
    gland = inputs.mri_labels[0]
    return {
        "fixed_contours": fixed,
        "moving_contours_before": {"MRI gland": warp_mask(gland, inputs.trus, sitk.Transform())},
        "moving_contours_after": {"MRI gland": warp_mask(gland, inputs.trus, transform)},
    }


def summary_table(report: dict) -> str:
    """A short plain-text table of the report's headline figures."""
    registration, segmentation = report["registration"], report["segmentation"]
    rows = [("registration", f"{registration['method']} ({registration['mode']})", "")]
    for label, key, unit in (("gland Dice", "dice", ""), ("landmark TRE", "tre", " mm"), ("gland HD95", "hd95_mm", " mm")):
        before = registration.get(f"{key}_before_mm" if key == "tre" else f"{key}_before")
        after = registration.get(f"{key}_after_mm" if key == "tre" else f"{key}_after")
        if before is not None:
            rows.append((label, f"{before:.3f}{unit} -> {after:.3f}{unit}", "before -> after"))
    if "dice" in segmentation:
        rows.append(("tumour Dice", f"{segmentation['dice']:.3f}", segmentation["model"]))
    rows.append(("time", f"{report['timings_s']['total']:.1f} s", ""))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}  {note}".rstrip() for name, value, note in rows)


def require_labels_pair(trus_labels: list, mri_labels: list) -> None:
    """Label channels must come in pairs with the same number of channels (gland + the same landmarks)."""
    if bool(trus_labels) != bool(mri_labels):
        raise InputError("--fixed-label and --moving-label: give both or neither")
    if len(trus_labels) != len(mri_labels):
        raise InputError(f"--fixed-label has {len(trus_labels)} channels but --moving-label {len(mri_labels)}")
