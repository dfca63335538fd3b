"""The seed 000 ablation on phantoms: TRUS-only U-Net vs naive MRI concatenation vs the registration-enhanced U-Net,
on held-out phantoms whose tumours are faint on TRUS and clear on MRI (and seed 004's CSAD on their MRI). Prints
Markdown tables for the README.

    python scripts/tumour_ablation.py --out runs/tumour-ablation                 # held-out seeds 1000-1029

Cases: the phantom of each seed drawn from the ``data`` section of ``configs/reg-enhanced.yaml`` (the anatomy,
tumour count and faint TRUS contrast the models were trained on; the three configs share it), written in the
DeepReg layout with tumour labels and the true transform (``transforms/``), plus a *misaligned* transform
(``misaligned_transforms/``): the true one composed with a rigid error drawn, seeded by the case, from the
training's error range (up to ``mri_misalignment_mm`` / ``_deg``), i.e. a registration a few mm off.

Arms (the paper's Table 1 rows, and the registration each gets): ``trus-unet`` on the TRUS alone (weights of
``configs/trus-unet-faint.yaml``); ``concat`` with the true and with the misaligned transform; ``reg-enhanced``
with the misaligned and with the true transform; on the MRI side, ``csad`` on the T2W with and without the
phantom's synthetic ADC (``adc_images/``, as in training), scored against the MRI tumour labels. Per case and
arm, the command a user types (in-process):

    mritrus-fusion segment --model concat --trus TRUS --mri MRI --transform T --out SEG --probabilities-out P

then PI-CAI detection maps of the probabilities (``report_guided_annotation.extract_lesion_candidates``, the
PI-CAI baseline's candidate extraction) and, per arm,

    mritrus-fusion evaluate detection --predictions DET --labels fixed_tumour_labels --glands fixed_labels
    mritrus-fusion evaluate segmentation --dataset DATA --predictions SEG --label-folder fixed_tumour_labels

(``moving_tumour_labels`` and ``moving_labels`` for the MRI-side arms), whose Dice is per case (a tumour-free
case scores 1 when nothing is predicted, 0 otherwise)
(lesion level: seed 000's rules, a lesion hit by >= 1 % of its voxels, sextants as negatives; patient level:
a patient with a lesion is a TP when one is hit; PI-CAI: case AUROC, lesion AP and their mean).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MRITRUSFusionLib.cli import main
from MRITRUSFusionLib.io import write_transform, write_volume
from MRITRUSFusionLib.phantom import generate_phantom, write_phantom_case
from MRITRUSFusionLib.training.config import load_config
from MRITRUSFusionLib.training.fusion_data import misaligned, phantom_roles, rigid_error
from MRITRUSFusionLib.training.phantom_data import phantom_overrides

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "MRITRUSFusionLib" / "configs" / "reg-enhanced.yaml"
MODELS_DIR = ROOT / "Resources" / "Models"
#: Folder of each input role in the written dataset.
ROLE_FOLDERS = {"trus": "fixed_images", "mri": "moving_images", "adc": "adc_images"}


@dataclass(frozen=True)
class Arm:
    """A model, its weight file, its inputs (first = output grid) and the transform folder (MRI onto TRUS)."""

    model: str
    weights: str
    inputs: tuple[str, ...]
    transforms: str | None = None

    @property
    def side(self) -> str:
        """``fixed`` (TRUS) or ``moving`` (MRI): the label folders the arm is scored against."""
        return "fixed" if self.inputs[0] == "trus" else "moving"


ARMS = {
    "trus-unet": Arm("trus-unet", "trus-unet-faint.pt", ("trus",)),
    "concat, true transform": Arm("concat", "concat.pt", ("trus", "mri"), "transforms"),
    "concat, misaligned": Arm("concat", "concat.pt", ("trus", "mri"), "misaligned_transforms"),
    "reg-enhanced, misaligned": Arm("reg-enhanced", "reg-enhanced.pt", ("trus", "mri"), "misaligned_transforms"),
    "reg-enhanced, true transform": Arm("reg-enhanced", "reg-enhanced.pt", ("trus", "mri"), "transforms"),
    "csad, T2W + ADC": Arm("csad", "csad.pt", ("mri", "adc")),
    "csad, T2W only": Arm("csad", "csad.pt", ("mri",)),
}


def run(arguments: list[str]) -> None:
    """``mritrus-fusion ARGUMENTS`` in this process (its stdout swallowed); SystemExit unless it succeeds."""
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["--progress", "none", *arguments])
    if code != 0:
        raise SystemExit(f"failed: mritrus-fusion {' '.join(arguments)}")


def write_cases(seeds: range, data: Path) -> list[str]:
    """The phantoms of ``seeds`` under ``data`` (DeepReg layout, true and misaligned transforms, synthetic ADC);
    case names."""
    section = load_config(CONFIG).data
    names = []
    for seed in seeds:
        name = f"phantom{seed}"
        phantom = generate_phantom(**phantom_overrides(seed, section))
        write_phantom_case(phantom, data, name)
        centre = phantom.trus.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in phantom.trus.GetSize()])
        error = rigid_error(np.random.default_rng([seed, 1]), centre, section.mri_misalignment_mm,
                            section.mri_misalignment_deg)
        write_transform(misaligned(phantom.transform, error), data / "misaligned_transforms" / f"{name}.h5")
        write_volume(phantom_roles(phantom, ("adc",), seed)["adc"], data / ROLE_FOLDERS["adc"] / f"{name}.nii.gz")
        names.append(name)
    return names


def detection_map(probability: sitk.Image) -> sitk.Image:
    """PI-CAI lesion candidates of a probability map: each candidate one constant confidence, 0 elsewhere."""
    from report_guided_annotation import extract_lesion_candidates

    with contextlib.redirect_stdout(sys.stderr):
        candidates = extract_lesion_candidates(sitk.GetArrayFromImage(probability).astype(np.float64))[0]
    image = sitk.GetImageFromArray(candidates.astype(np.float32))
    image.CopyInformation(probability)
    return image


def segment_arm(arm: str, names: list[str], data: Path, out: Path, weights_dir: Path) -> None:
    """``segment`` of every case with the arm's model and transform; label maps, probabilities, detection maps."""
    arm = ARMS[arm]
    for name in names:
        inputs = [item for role in arm.inputs
                  for item in (f"--{role}", str(data / ROLE_FOLDERS[role] / f"{name}.nii.gz"))]
        if arm.transforms:
            inputs += ["--transform", str(data / arm.transforms / f"{name}.h5")]
        probability = out / "probabilities" / f"{name}.nii.gz"
        run(["segment", "--model", arm.model, "--weights", str(weights_dir / arm.weights), *inputs, "--device", "cpu",
             "--out", str(out / "segmentations" / f"{name}.nii.gz"), "--probabilities-out", str(probability),
             "--overwrite"])
        write_volume(detection_map(sitk.ReadImage(str(probability))), out / "detections" / f"{name}.nii.gz")


def evaluate_arm(side: str, data: Path, out: Path) -> dict:
    """Detection and segmentation summaries of one arm's predictions against the ``side`` labels."""
    run(["evaluate", "detection", "--predictions", str(out / "detections"), "--labels",
         str(data / f"{side}_tumour_labels"), "--glands", str(data / f"{side}_labels"), "--out",
         str(out / "detection-evaluation"), "--overwrite"])
    run(["evaluate", "segmentation", "--dataset", str(data), "--predictions", str(out / "segmentations"),
         "--label-folder", f"{side}_tumour_labels", "--out", str(out / "segmentation-evaluation"), "--overwrite"])
    detection = json.loads((out / "detection-evaluation" / "summary.json").read_text(encoding="utf-8"))
    segmentation = json.loads((out / "segmentation-evaluation" / "summary.json").read_text(encoding="utf-8"))
    return {"detection": detection, "dice": segmentation["structures"]["foreground"]["dice"]}


def table(results: dict, n_cases: int, n_positive: int) -> str:
    """The Markdown table of the arms in ``results``."""
    lines = [f"| arm ({n_cases} cases, {n_positive} with tumours) | Dice mean ± sd | lesion sens | sextant spec "
             f"| patient sens | patient spec | patient AUC | PI-CAI AUROC | PI-CAI AP | PI-CAI score |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, result in results.items():
        lesion, patient = result["detection"]["lesion_level"], result["detection"]["patient_level"]
        picai, dice = result["detection"]["picai"], result["dice"]
        lines.append(f"| {arm} | {dice['mean']:.3f} ± {dice['std']:.3f} | {lesion['sensitivity']:.2f} | "
                     f"{lesion['specificity']:.2f} | {patient['sensitivity']:.2f} | {patient['specificity']:.2f} | "
                     f"{patient['auc']:.2f} | {picai['auroc']:.2f} | {picai['ap']:.2f} | {picai['picai_score']:.2f} |")
    return "\n".join(lines)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the cases, predictions and evaluations")
    parser.add_argument("--first-seed", type=int, default=1000, help="first phantom seed (held out: 1000-1099)")
    parser.add_argument("--cases", type=int, default=30, help="number of consecutive seeds")
    parser.add_argument("--weights-dir", default=str(MODELS_DIR), help="folder of the arms' weight files")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), metavar="ARM",
                        help=f"arms to run (default all: {', '.join(ARMS)})")
    return parser.parse_args()


def run_ablation(args: argparse.Namespace) -> None:
    out = Path(args.out)
    data = out / "data"
    names = write_cases(range(args.first_seed, args.first_seed + args.cases), data)
    results = {}
    for arm in args.arms:
        folder = out / arm.replace(", ", "-").replace(" + ", "-").replace(" ", "-")
        segment_arm(arm, names, data, folder, Path(args.weights_dir))
        results[arm] = evaluate_arm(ARMS[arm].side, data, folder)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    positive = sum(int(sitk.GetArrayFromImage(sitk.ReadImage(str(data / "fixed_tumour_labels" / f"{n}.nii.gz")))
                       .any()) for n in names)
    for side, title in (("fixed", "TRUS (seed 000 ablation)"), ("moving", "MRI (seed 004 CSAD)")):
        chosen = {arm: result for arm, result in results.items() if ARMS[arm].side == side}
        if chosen:
            print(f"\n{title}\n\n{table(chosen, len(names), positive)}")


if __name__ == "__main__":
    run_ablation(parse_arguments())
