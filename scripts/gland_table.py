"""Gland segmentation on a DeepReg-layout dataset with the bundled gland-trus and gland-mri models. Prints the
README's Markdown table (Dice and HD95 against channel 0, the gland, of the case's labels).

    python scripts/gland_table.py ../shared/data/mrus-example --cases obs080..obs107 --out held-out-glands

Per case it runs exactly the commands a user types (in-process, through ``MRITRUSFusionLib.cli.main``):

    mritrus-fusion segment --trus fixed_images/CASE.nii.gz --model gland-trus --out OUT/gland-trus/CASE.nii.gz
    mritrus-fusion segment --mri moving_images/CASE.nii.gz --model gland-mri --out OUT/gland-mri/CASE.nii.gz

then, per model, ``mritrus-fusion evaluate segmentation --dataset DATASET --predictions OUT/MODEL
--label-folder fixed_labels|moving_labels --cases CASES --out OUT/MODEL-evaluation`` (gland = channel 0).
Registration driven by these predicted glands is a row of ``scripts/registration_table.py``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from MRITRUSFusionLib.cli import main
from MRITRUSFusionLib.io import open_dataset
from MRITRUSFusionLib.training.case_names import select

#: model -> (segment option, image role, ground-truth label folder)
MODELS = {"gland-trus": ("--trus", "fixed_image", "fixed_labels"),
          "gland-mri": ("--mri", "moving_image", "moving_labels")}


def run(arguments: list[str]) -> None:
    """``mritrus-fusion ARGUMENTS`` in this process; SystemExit unless it succeeds."""
    if main(["--progress", "none", *arguments]) != 0:
        raise SystemExit(f"failed: mritrus-fusion {' '.join(arguments)}")


def segment_cases(cases, models: list[str], out: Path, device: str, tta: bool) -> None:
    """``segment`` of every case with each of ``models`` into ``out/MODEL/CASE.nii.gz``."""
    for case in cases:
        for model in models:
            option, role, _ = MODELS[model]
            target = out / model / f"{case.name}.nii.gz"
            run(["segment", option, str(getattr(case, role)), "--model", model, "--device", device,
                 "--out", str(target), "--overwrite", *(["--tta"] if tta else [])])


def evaluate(dataset: str, cases: str, models: list[str], out: Path) -> dict:
    """``evaluate segmentation`` per model; returns model -> summary of the ``foreground`` structure, with the
    smallest per-case Dice added as ``dice.min``."""
    summaries = {}
    for model in models:
        labels = MODELS[model][2]
        folder = out / f"{model}-evaluation"
        run(["evaluate", "segmentation", "--dataset", dataset, "--predictions", str(out / model),
             "--label-folder", labels, "--cases", cases, "--out", str(folder), "--overwrite"])
        summaries[model] = json.loads((folder / "summary.json").read_text(encoding="utf-8"))["structures"]["foreground"]
        with open(folder / "per_case.csv", newline="", encoding="utf-8") as handle:
            summaries[model]["dice"]["min"] = min(float(row["dice"]) for row in csv.DictReader(handle))
    return summaries


def segmentation_table(summaries: dict, n_cases: int) -> str:
    """Markdown rows: per model, Dice (mean, std, median, min over cases) and mean HD95 (mm)."""
    lines = ["| model | input | cases | mean Dice | std | median Dice | min Dice | mean HD95 (mm) |",
             "|---|---|---|---|---|---|---|---|"]
    for model, summary in summaries.items():
        dice, hd95 = summary["dice"], summary["hd95_mm"]
        modality = "TRUS" if MODELS[model][1] == "fixed_image" else "MRI"
        lines.append(f"| {model} | {modality} | {n_cases} | {dice['mean']:.3f} | {dice['std']:.3f} | "
                     f"{dice['median']:.3f} | {dice['min']:.3f} | {hd95['mean']:.2f} |")
    return "\n".join(lines)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="DeepReg paired folder, e.g. ../shared/data/mrus-example")
    parser.add_argument("--cases", required=True, help="case names or ranges, e.g. obs080..obs107")
    parser.add_argument("--out", required=True, help="folder for predictions and evaluations")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--tta", action="store_true", help="segment with test-time flips")
    return parser.parse_args()


def run_table(args: argparse.Namespace) -> None:
    cases_by_name = {case.name: case for case in open_dataset(args.dataset)}
    cases = [cases_by_name[name] for name in select(list(cases_by_name), [args.cases.replace("..", "-")])]
    out = Path(args.out)
    segment_cases(cases, args.models, out, args.device, args.tta)
    print(segmentation_table(evaluate(args.dataset, args.cases, args.models, out), len(cases)))


if __name__ == "__main__":
    run_table(parse_arguments())
