"""Registration methods compared on a DeepReg/μ-RegPro/manifest dataset: every method registers every selected
case (image-only unless the row says gland-driven), transforms go to ``OUT/<row>/<case>.(tfm|h5)``, and the
evaluation suite scores them. Prints the README's Markdown table and writes ``OUT/table.csv``.

    python scripts/registration_table.py ../shared/data/mrus-example --cases obs080..obs107 --out held-out

Rows: identity; classical rigid/affine/bspline image-only, gland-driven on the glands predicted by the bundled
``gland-trus``/``gland-mri`` models (still image-only: no mask is read; the time includes the segmentation), and
gland-driven with the true masks (an upper reference: it reads the labels); the predicted-gland rigid followed by
the bundled population gland strain (``auto``'s first stage); each learned method with weights; ``auto``.
``--rows`` picks some; ``ROW + METHOD [+ METHOD ...]`` chains learned methods after a row, each starting from
the previous transform, e.g. ``"rigid (gland-driven with predicted glands) + vit-affine"``.
Columns: gland Dice (median over cases), HD95 (mm, median), landmark TRE (mm, median and mean over all
landmarks), RDSC/RTRE (μ-RegPro robust means over the best 68 % of cases), folding fraction (mean over cases,
deformable transforms only) and registration time per case (s, mean). ``--paired-against ROW`` adds a
landmark-by-landmark comparison of every row with ``ROW`` (landmarks improved, median/mean change, sign test).
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from MRITRUSFusionLib.evaluation.registration import evaluate_registration_dataset
from MRITRUSFusionLib.io import open_dataset, read_label_channels, read_volume, write_transform
from MRITRUSFusionLib.registration.gland_strain import default_gland_strain
from MRITRUSFusionLib.registration.learned.models import available_methods
from MRITRUSFusionLib.registration.methods import gland_models_present, predicted_glands, register
from MRITRUSFusionLib.training.case_names import select

#: row-label suffix -> where the gland masks of a classical row come from
MASK_SOURCES = {"image-only": "none", "gland-driven with predicted glands": "predicted",
                "gland-driven with true masks": "true"}
CLASSICAL_ROWS = {f"{method} ({mode})": (method, source)
                  for mode, source in MASK_SOURCES.items() for method in ("rigid", "affine", "bspline")}
#: auto's gland stage on its own: the predicted-gland rigid followed by the population gland strain
RIGID_WITH_STRAIN = "rigid-with-gland-strain"
STRAIN_ROW = "rigid with gland strain (gland-driven with predicted glands)"


def default_rows() -> dict[str, tuple[str, str]]:
    """Row label -> (method, mask source: none, predicted or true) for every method runnable here."""
    learned = {name: (name, "none") for name in ["attention-reg", *available_methods(), "auto"]}
    classical = {label: row for label, row in CLASSICAL_ROWS.items() if row[1] != "predicted" or gland_models_present()}
    if gland_models_present() and default_gland_strain() is not None:
        classical[STRAIN_ROW] = (RIGID_WITH_STRAIN, "predicted")
    return {"identity": ("identity", "none"), **classical, **learned}


class GlandMasks:
    """Per case, (TRUS, MRI) gland masks: none, the true labels, or predicted once by the gland models (with
    the seconds the prediction took)."""

    def __init__(self):
        self.predictions: dict[str, tuple[sitk.Image, sitk.Image, float]] = {}

    def __call__(self, case, source: str, fixed: sitk.Image, moving: sitk.Image) -> tuple:
        """(fixed mask, moving mask, seconds spent obtaining them) for ``source``."""
        if source == "true":
            return read_label_channels(case.fixed_label)[0], read_label_channels(case.moving_label)[0], 0.0
        if source == "predicted":
            if case.name not in self.predictions:
                start = time.perf_counter()
                masks = predicted_glands(fixed, moving, device="cpu")
                self.predictions[case.name] = (*masks, time.perf_counter() - start)
            return self.predictions[case.name]
        return None, None, 0.0


def chained_row(label: str, rows_available: dict[str, tuple[str, str]]) -> tuple[str, str, list[str]]:
    """(method, mask source, learned methods chained after it) of row ``label`` (``ROW + METHOD ...``)."""
    first, *then = label.split(" + ")
    if first not in rows_available:
        raise SystemExit(f"--rows: unknown row {first!r}; rows here: {', '.join(rows_available)}")
    return (*rows_available[first], then)


def register_case(case, method: str, source: str, masks: GlandMasks, folder: Path, then: Sequence[str] = ()) -> float:
    """Register one case (``method``, then each learned method of ``then`` from the previous transform), write
    its transform into ``folder``; returns the time (s) of registration and of the gland prediction it needed."""
    fixed, moving = read_volume(case.fixed_image), read_volume(case.moving_image)
    fixed_mask, moving_mask, mask_seconds = masks(case, source, fixed, moving)
    start = time.perf_counter()
    if method == "identity":
        transform = sitk.Transform(3, sitk.sitkIdentity)
    elif method == RIGID_WITH_STRAIN:
        transform = default_gland_strain().after(register(fixed, moving, "rigid", fixed_mask, moving_mask), fixed_mask)
    else:
        transform = register(fixed, moving, method, fixed_mask, moving_mask, device="cpu")
    for stage in then:
        transform = register(fixed, moving, stage, device="cpu", initial=transform)
    seconds = time.perf_counter() - start + mask_seconds
    write_transform(transform, folder / f"{case.name}{'.tfm' if transform.IsLinear() else '.h5'}")
    return seconds


def row_summary(label: str, summary: dict, seconds: list[float]) -> dict:
    """One table row from the evaluation summary (``after``)."""
    after = summary["after"]
    folding = after.get("folding_fraction", {}).get("mean", float("nan"))
    return {"method": label, "dice_median": after["dice"]["median"], "hd95_median_mm": after["hd95_mm"]["median"],
            "tre_median_mm": after["landmark_tre_mm"]["median"], "tre_mean_mm": after["landmark_tre_mm"]["mean"],
            "rdsc": after["rdsc"], "rtre_mm": after["rtre_mm"], "folding_fraction": folding,
            "seconds": float(np.mean(seconds))}


def landmark_tre(result) -> np.ndarray:
    """Per-landmark TRE (mm) after registration, in the evaluation's (case, landmark) order."""
    return np.array([row["tre_after_mm"] for row in result.landmark_rows])


def paired_markdown(reference: str, results: dict) -> str:
    """Each row's per-landmark TRE against row ``reference``'s on the same landmarks: how many it improves, the
    median and mean paired change (mm), and the two-sided sign-test p-value (SciPy's ``binomtest``)."""
    from scipy.stats import binomtest

    base = landmark_tre(results[reference])
    lines = [f"| method, against {reference} | landmarks improved | median change (mm) | mean change (mm) | sign test p |",
             "|---|---|---|---|---|"]
    for label, result in results.items():
        if label == reference:
            continue
        change = landmark_tre(result) - base
        better, worse = int((change < 0).sum()), int((change > 0).sum())
        p_value = binomtest(better, better + worse).pvalue if better + worse else float("nan")
        lines.append(f"| {label} | {better} / {len(change)} | {np.median(change):+.2f} | {change.mean():+.2f} | "
                     f"{p_value:.2g} |")
    return "\n".join(lines)


def markdown(rows: list[dict]) -> str:
    lines = ["| method | gland Dice | HD95 (mm) | median TRE (mm) | mean TRE (mm) | RDSC | RTRE (mm) | folding | time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        folding = "–" if np.isnan(r["folding_fraction"]) else f"{100 * r['folding_fraction']:.3f} %"
        lines.append(f"| {r['method']} | {r['dice_median']:.3f} | {r['hd95_median_mm']:.1f} | {r['tre_median_mm']:.2f} | "
                     f"{r['tre_mean_mm']:.2f} | {r['rdsc']:.3f} | {r['rtre_mm']:.2f} | {folding} | {r['seconds']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--cases", required=True, help="case names or ranges, e.g. obs080..obs107")
    parser.add_argument("--out", required=True, help="folder for transforms and table.csv")
    parser.add_argument("--rows", help="comma-separated row labels, each optionally followed by ' + METHOD' "
                                       "chains (default: every runnable method)")
    parser.add_argument("--paired-against", metavar="ROW",
                        help="also compare every row's per-landmark TRE with this row's (one of --rows)")
    args = parser.parse_args()
    rows_available = default_rows()
    labels = args.rows.split(",") if args.rows else list(rows_available)
    cases_by_name = {case.name: case for case in open_dataset(args.dataset)}
    names = select(list(cases_by_name), [args.cases.replace("..", "-")])
    if args.paired_against and args.paired_against not in labels:
        raise SystemExit(f"--paired-against: {args.paired_against!r} is not one of the rows")
    table, masks, results = [], GlandMasks(), {}
    for label in labels:
        method, source, then = chained_row(label, rows_available)
        folder = Path(args.out) / label.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
        folder.mkdir(parents=True, exist_ok=True)
        seconds = [register_case(cases_by_name[name], method, source, masks, folder, then) for name in names]
        result = results[label] = evaluate_registration_dataset(args.dataset, folder, case_names=names,
                                                                 montage_cases=0)
        table.append(row_summary(label, result.summary, seconds))
        print(markdown(table[-1:]).splitlines()[-1], flush=True)
    with open(Path(args.out) / "table.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    print(f"\n{len(names)} cases ({names[0]}..{names[-1]})\n")
    print(markdown(table))
    if args.paired_against:
        print(f"\n{paired_markdown(args.paired_against, results)}")


if __name__ == "__main__":
    main()
