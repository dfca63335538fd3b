#!/usr/bin/env python
"""Attention-Reg on the authors' sample: SRE before/after from every initialisation, as a Markdown table.

    python scripts/attention_reg_sample_eval.py [--weights Resources/Models/attention-reg.pt] [--stages 2]
                                                [--check-convention] [--sample DIR]

Rows: the ten ``init{k}`` folders; only k = 0 and 9 are test cases (1–6 trained on, 7–8 used for model
selection — their rows are shown for reference only). SRE = mean over the surface voxels of a proxy
gland (an ellipsoid with semi-axes 0.35 × the patch extent, centred in the TRUS patch; the sample has no
mask) of ``||T_est(p) − T_true(p)||`` — :func:`MRITRUSFusionLib.metrics.registration.surface_registration_error`
— in mm under the fitted spacing ``SAMPLE_SPACING_MM`` and in voxels of the patch grid.

``--check-convention`` prints the evidence for the matrix convention (``attention_reg_data`` docstring):
the NCC between ``US_j`` and ``US_k`` moved into the pose of ``j``, and between the MR and ``US_k`` under
the start and under the ground truth.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from MRITRUSFusionLib.metrics.registration import surface_registration_error  # noqa: E402
from MRITRUSFusionLib.registration.learned.attention_reg_data import (  # noqa: E402
    SAMPLE_ORIGIN_MM, SAMPLE_SPACING_MM, load_sample_case, proxy_gland_mask, sample_case_images, split_of)
from MRITRUSFusionLib.registration.learned.attention_reg_infer import register_attention_reg  # noqa: E402


def _ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    a, b = a[mask] - a[mask].mean(), b[mask] - b[mask].mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-12))


def check_convention(root) -> None:
    images = {k: sample_case_images(load_sample_case(k, root)) for k in range(10)}
    values = []
    for j, k in itertools.combinations(range(10), 2):
        fixed = images[j][0]
        moved = sitk.Resample(images[k][0], fixed, sitk.Transform(), sitk.sitkLinear, -1.0)
        array, reference = sitk.GetArrayFromImage(moved), sitk.GetArrayFromImage(fixed)
        values.append(_ncc(array, reference, array >= 0))
    print(f"US_k moved into the pose of US_j (identity in the TRUS frame), 45 pairs: NCC mean "
          f"{np.mean(values):.3f}, min {np.min(values):.3f}")
    raw = [_ncc(sitk.GetArrayFromImage(images[k][0]), sitk.GetArrayFromImage(images[k][1]),
                np.ones(images[k][0].GetSize()[::-1], bool)) for k in range(10)]
    start, truth = [], []
    for k in range(10):
        trus, mri, true, init = images[k]
        reference = sitk.GetArrayFromImage(trus)
        for transform, out in ((init, start), (true, truth)):
            warped = sitk.GetArrayFromImage(sitk.Resample(mri, trus, transform, sitk.sitkLinear, -1.0))
            out.append(_ncc(warped, reference, warped >= 0))
    print(f"MR vs US_k: raw arrays NCC {np.mean(raw):.3f}; MR through the start I_k {np.mean(start):.3f}; "
          f"through the ground truth G {np.mean(truth):.3f}")


def evaluate(weights, stages: int, root, device: str) -> str:
    rows = []
    header = ("| k | split | SRE before (mm) | SRE before (vox) | after stage 1 (mm) | after stage 1 (vox) | "
              f"after {stages} stages (mm) | after {stages} stages (vox) |")
    rows.append(header)
    rows.append("|" + "---|" * 8)
    test = {"before": [], "one": [], "final": []}
    for k in range(10):
        trus, mri, true, init = sample_case_images(load_sample_case(k, root))
        mask = proxy_gland_mask(trus)
        one = register_attention_reg(trus, mri, init, weights=weights, device=device, stages=1)
        final = register_attention_reg(trus, mri, init, weights=weights, device=device, stages=stages)
        cells = []
        for transform, key in ((init, "before"), (one, "one"), (final, "final")):
            mm = surface_registration_error(mask, transform, true)
            vox = surface_registration_error(mask, transform, true, unit="vox")
            cells += [f"{mm:.2f}", f"{vox:.2f}"]
            if split_of(k) == "test":
                test[key].append((mm, vox))
        name = split_of(k)
        bold = "**" if name == "test" else ""
        rows.append(f"| {bold}{k}{bold} | {name} | " + " | ".join(cells) + " |")
    mean = {key: np.mean(values, axis=0) for key, values in test.items()}
    rows.append("| **test mean** | 0, 9 | " + " | ".join(f"{mean[key][0]:.2f} | {mean[key][1]:.2f}"
                                                         for key in ("before", "one", "final")) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=None, help="checkpoint (default: the bundled attention-reg.pt)")
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--sample", default=None, help="sample folder (default ../shared/data/attention-reg-sample)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--check-convention", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"assumed sample spacing (mm, x y z): {SAMPLE_SPACING_MM}, origin {SAMPLE_ORIGIN_MM}")
    if args.check_convention:
        check_convention(args.sample)
    print(evaluate(args.weights, args.stages, args.sample, args.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
