"""Classical registration on a DeepReg-layout dataset: identity vs rigid/affine/bspline, gland-driven vs
image-only. Writes a per-case CSV and prints a Markdown table (medians over cases) for the README.

    python scripts/classical_table.py ../shared/data/mrus-example --first obs000 --last obs079 --out table.csv

Only cases whose name lies in [--first, --last] are used: keep held-out cases out of it.
"""

from __future__ import annotations

import argparse
import csv
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import SimpleITK as sitk

from MRITRUSFusionLib.io import open_dataset, read_label_channels, read_volume
from MRITRUSFusionLib.metrics.registration import registration_metrics
from MRITRUSFusionLib.registration.classical import METHODS, register_classical

MODES = ("gland-driven", "image-only")


def evaluate_case(case) -> list[dict]:
    """Rows (one per configuration) of gland Dice, mean landmark TRE (mm) and run time (s) of one case."""
    fixed, moving = read_volume(case.fixed_image), read_volume(case.moving_image)
    fixed_labels, moving_labels = read_label_channels(case.fixed_label), read_label_channels(case.moving_label)
    rows = [_row(case.name, "identity", "-", fixed_labels, moving_labels, sitk.Transform(), 0.0)]
    for mode in MODES:
        masks = (fixed_labels[0], moving_labels[0]) if mode == "gland-driven" else (None, None)
        for method in METHODS:
            start = time.perf_counter()
            transform = register_classical(fixed, moving, method, *masks)
            rows.append(_row(case.name, method, mode, fixed_labels, moving_labels, transform,
                             time.perf_counter() - start))
    return rows


def _row(name, method, mode, fixed_labels, moving_labels, transform, seconds) -> dict:
    metrics = registration_metrics(fixed_labels, moving_labels, transform)
    return {"case": name, "method": method, "mode": mode, "dice": metrics["dice"],
            "tre_mean_mm": metrics.get("tre_mean_mm", float("nan")), "seconds": seconds}


def markdown_table(rows: list[dict]) -> str:
    lines = ["| method | mode | median gland Dice | median TRE (mm) | mean TRE (mm) | mean time (s) |",
             "|---|---|---|---|---|---|"]
    configurations = dict.fromkeys((r["method"], r["mode"]) for r in rows)
    for method, mode in configurations:
        chosen = [r for r in rows if (r["method"], r["mode"]) == (method, mode)]
        dice = np.array([r["dice"] for r in chosen])
        tre = np.array([r["tre_mean_mm"] for r in chosen])
        seconds = np.mean([r["seconds"] for r in chosen])
        lines.append(f"| {method} | {mode} | {np.median(dice):.3f} | {np.nanmedian(tre):.2f} | "
                     f"{np.nanmean(tre):.2f} | {seconds:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--first", required=True, help="first case name (inclusive)")
    parser.add_argument("--last", required=True, help="last case name (inclusive)")
    parser.add_argument("--out", required=True, help="per-case CSV")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    cases = [c for c in open_dataset(args.dataset) if args.first <= c.name <= args.last]
    with ProcessPoolExecutor(args.workers) as pool:
        rows = [row for case_rows in pool.map(evaluate_case, cases) for row in case_rows]
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(cases)} cases ({args.first}..{args.last})")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
