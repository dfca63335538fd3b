"""The ``mritrus-fusion`` command (ARCHITECTURE.md, "The command line").

Each sub-command is a thin function over the library. Expected failures (:class:`FusionError`) print one
``error: ...`` line on stderr and exit 1; usage errors exit 2 (argparse); outputs are written atomically
and only after the work succeeded, so a failed run leaves no partial file. ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from . import __version__, progress
from .errors import FusionError, InputError

EXIT_FAILURE = 1
#: Smallest ``bench --size``: coarser phantom grids lose the 2.5 mm landmarks TRE is measured on.
MIN_BENCH_SIZE = 32


# --------------------------------------------------------------------------------------------- helpers
def _read_volume(path: str, option: str) -> sitk.Image:
    from .io import read_volume

    return read_volume(path, name=option)


def _read_mask(path: str, option: str) -> sitk.Image:
    """Channel 0 of a label file (3D mask or 4D channels), which must not be empty."""
    from .io import read_label_channels

    mask = read_label_channels(path, name=option)[0]
    if not np.any(sitk.GetArrayViewFromImage(mask)):
        raise InputError(f"{option} {path}: mask is empty")
    return mask


def _read_channels(path: str, option: str) -> list[sitk.Image]:
    """Label channels (channel 0 gland, 1.. landmarks); the gland must not be empty."""
    from .io import read_label_channels

    channels = read_label_channels(path, name=option)
    if not np.any(sitk.GetArrayViewFromImage(channels[0])):
        raise InputError(f"{option} {path}: gland (channel 0) is empty")
    return channels


def _write_json(content: dict, path: str, overwrite: bool) -> None:
    from .io import write_json

    write_json(content, path, overwrite)


def _at_least(option: str, value: int, minimum: int) -> None:
    """Fail with one line naming ``option`` when ``value`` is below ``minimum``."""
    if value < minimum:
        raise InputError(f"{option} {value}: must be at least {minimum}")


def _check_outputs(overwrite: bool, *paths: Optional[str]) -> None:
    """Fail before any work when an output exists and ``--overwrite`` was not given."""
    from .errors import OutputExistsError

    for path in paths:
        if path and Path(path).exists() and not overwrite:
            raise OutputExistsError(f"{path}: output exists (pass --overwrite to replace it)")


# -------------------------------------------------------------------------------------------- commands
def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import DemoInputs, phantom_inputs, require_labels_pair, run_demo, summary_table

    if (args.fixed is None) != (args.moving is None):
        raise InputError("--fixed and --moving: give both (your own pair) or neither (the built-in phantom)")
    if args.fixed is None:
        inputs = phantom_inputs(args.seed)
    else:
        trus_labels = _read_channels(args.fixed_label, "--fixed-label") if args.fixed_label else []
        mri_labels = _read_channels(args.moving_label, "--moving-label") if args.moving_label else []
        require_labels_pair(trus_labels, mri_labels)
        inputs = DemoInputs(_read_volume(args.fixed, "--fixed"), _read_volume(args.moving, "--moving"),
                            trus_labels, mri_labels, source=f"{args.fixed} + {args.moving}")
    result = run_demo(inputs, args.out, args.method, args.model, args.weights, args.device, args.overwrite)
    print(summary_table(result.report))
    print(f"outputs in {Path(args.out).resolve()}")


def cmd_phantom(args: argparse.Namespace) -> None:
    from .phantom import generate_phantom, write_phantom_case

    _at_least("--cases", args.cases, 1)
    _at_least("--tumours", args.tumours, 0)
    if Path(args.out).is_file():
        raise InputError(f"--out {args.out}: is a file; phantom cases go into a folder")
    with progress.stage("phantom", total=args.cases) as bar:
        for k in range(args.cases):
            name = f"case{k:03d}"
            case = generate_phantom(seed=args.seed + k, n_tumours=args.tumours)
            write_phantom_case(case, args.out, name, overwrite=args.overwrite)
            bar.advance(message=name)
    print(f"{args.cases} phantom case(s) in {Path(args.out).resolve()} (DeepReg paired layout)")


def cmd_register(args: argparse.Namespace) -> None:
    from .registration.methods import check_method

    check_method(args.method, args.weights)
    if args.dataset:
        _register_dataset(args)
    else:
        _register_pair(args)


def _register_pair(args: argparse.Namespace) -> None:
    from .io import write_transform, write_volume
    from .registration.methods import register, returns_linear
    from .registration.warp import warp_image

    _require(args, "--fixed", "--moving")
    _refuse(args, "--split", "--cases", "--gland-masks", "--batch-size")
    _check_outputs(args.overwrite, args.transform_out, args.warped_out)
    if not returns_linear(args.method) and Path(args.transform_out).suffix.lower() != ".h5":
        raise InputError(f"--transform-out {args.transform_out}: method '{args.method}' can return a deformation; "
                         "write it as .h5")
    if (args.fixed_mask is None) != (args.moving_mask is None):
        raise InputError("--fixed-mask and --moving-mask: give both (gland-driven) or neither (image-only)")
    fixed, moving = _read_volume(args.fixed, "--fixed"), _read_volume(args.moving, "--moving")
    masks = ((_read_mask(args.fixed_mask, "--fixed-mask"), _read_mask(args.moving_mask, "--moving-mask"))
             if args.fixed_mask else (None, None))
    transform = register(fixed, moving, args.method, *masks, weights=args.weights, device=args.device)
    warped = warp_image(moving, fixed, transform) if args.warped_out else None
    write_transform(transform, args.transform_out, overwrite=args.overwrite)
    if warped is not None:
        write_volume(warped, args.warped_out, overwrite=args.overwrite)


def _register_dataset(args: argparse.Namespace) -> None:
    from .evaluation.predictions import select_cases
    from .io import open_dataset
    from .registration.dataset import register_dataset

    _refuse(args, "--fixed", "--moving", "--fixed-mask", "--moving-mask")
    for option, path in (("--transform-out", args.transform_out), ("--warped-out", args.warped_out)):
        if path and Path(path).is_file():
            raise InputError(f"{option} {path}: is a file; with --dataset it is a folder (one file per case)")
    cases = select_cases(open_dataset(args.dataset, args.split), _case_names(args.cases), args.dataset)
    result = register_dataset(cases, args.method, args.transform_out, gland_masks=args.gland_masks,
                              weights=args.weights, device=args.device, batch_size=args.batch_size,
                              warped_out=args.warped_out, overwrite=args.overwrite)
    print(json.dumps({"transforms": str(Path(args.transform_out).resolve()), "registered": len(result.written),
                      "failed": result.failed}))
    if result.failed:
        named = "; ".join(f"{name}: {reason}" for name, reason in list(result.failed.items())[:3])
        raise InputError(f"register --dataset: {len(result.failed)} of {len(cases)} case(s) failed ({named}"
                         f"{' ...' if len(result.failed) > 3 else ''}); the others are in {args.transform_out}")


def cmd_bench(args: argparse.Namespace) -> None:
    from . import bench

    png = args.png or str(Path(args.out).with_suffix(".png"))
    _check_outputs(args.overwrite, args.out, png)
    _at_least("--phantoms", args.phantoms, 0 if args.dataset else 1)
    _at_least("--size", args.size, MIN_BENCH_SIZE)
    _at_least("--repeats", args.repeats, 1)
    cases = bench.phantom_cases(args.phantoms, seed=args.seed, size=args.size)
    if args.dataset:
        cases += bench.dataset_cases(args.dataset, _case_names(args.cases) or [])
    result = bench.run_benchmark(cases, repeats=args.repeats, timeout_s=args.timeout)
    scaling = None if args.no_scaling else bench.scaling_curve(quick=args.quick, timeout_s=args.timeout)
    if not args.no_training:
        result["training_throughput"] = bench.training_throughput(size=args.training_size)
    bench.write_bench(result, args.out, png, overwrite=args.overwrite, scaling=scaling)
    print(bench.format_table(result))
    if not args.no_training:
        speed = result["training_throughput"]
        print(f"training throughput: {speed['samples_per_s']:.3f} samples/s ({speed['model']}, {speed['size']}³, "
              f"batch {speed['batch_size']}, {speed['device']}, {speed['threads']} threads)")


def cmd_warp(args: argparse.Namespace) -> None:
    from .io import read_label, read_transform, write_label, write_volume
    from .registration.warp import warp_image

    _check_outputs(args.overwrite, args.out)
    moving = read_label(args.moving, name="--moving") if args.label else _read_volume(args.moving, "--moving")
    reference = _read_volume(args.reference, "--reference")
    transform = read_transform(args.transform, name="--transform")
    warped = warp_image(moving, reference, transform, label=args.label)
    (write_label if args.label else write_volume)(warped, args.out, overwrite=args.overwrite)


def cmd_map_points(args: argparse.Namespace) -> None:
    from .io import read_points, read_transform, write_points
    from .registration.warp import map_points_to_fixed

    _check_outputs(args.overwrite, args.out)
    points, labels = read_points(args.points)
    transform = read_transform(args.transform, name="--transform")
    write_points(map_points_to_fixed(transform, points), labels, args.out, overwrite=args.overwrite)


#: ``segment`` options naming input images, as model input roles.
SEGMENT_ROLES = ("trus", "mri", "adc")


def cmd_segment(args: argparse.Namespace) -> None:
    from .io import read_transform, write_label, write_seg_nrrd, write_volume
    from .io.atomic import full_suffix
    from .metrics.overlap import volume_ml
    from .segmentation.inference import check_inputs, segment
    from .segmentation.lesions import check_threshold, write_lesions
    from .segmentation.models import MODELS

    if args.model not in MODELS:
        raise InputError(f"--model {args.model}: unknown model (available: {', '.join(sorted(MODELS))})")
    spec = MODELS[args.model]
    given = [role for role in SEGMENT_ROLES if getattr(args, role) is not None]
    check_inputs(spec, given, args.transform is not None)
    if args.lesions_out and spec.target != "tumour":
        raise InputError(f"--lesions-out: model '{spec.name}' segments the {spec.target}, not lesions")
    if args.lesions_out and full_suffix(args.lesions_out) not in (".json", ".csv"):
        raise InputError(f"--lesions-out {args.lesions_out}: write lesion candidates as .json or .csv")
    _check_outputs(args.overwrite, args.out, args.probabilities_out, args.lesions_out)
    check_threshold(args.threshold)
    images = {role: _read_volume(getattr(args, role), f"--{role}") for role in given}
    transform = read_transform(args.transform, name="--transform") if args.transform else None
    result = segment(images, spec.name, args.weights, args.device, transform, args.threshold, args.min_volume,
                     args.tta)
    if full_suffix(args.out) == ".seg.nrrd":
        write_seg_nrrd(result.label, args.out, result.segments, overwrite=args.overwrite)
    else:
        write_label(result.label, args.out, overwrite=args.overwrite)
    if args.probabilities_out:
        write_volume(result.probability, args.probabilities_out, overwrite=args.overwrite)
    if args.lesions_out:
        write_lesions(result.lesions, args.lesions_out, overwrite=args.overwrite, model=spec.name,
                      threshold=args.threshold, min_volume_mm3=args.min_volume)
    print(json.dumps({"model": spec.name, "target": spec.target, "volume_ml": round(volume_ml(result.label), 3),
                      "segments": [segment.name for segment in result.segments]}))


def _require(args: argparse.Namespace, *options: str) -> None:
    """Options required in the chosen mode (per case or whole dataset), named as the user types them."""
    for option in options:
        if getattr(args, option.lstrip("-").replace("-", "_")) is None:
            raise InputError(f"{option}: required {'with --dataset' if args.dataset else 'for one case'}")


def _refuse(args: argparse.Namespace, *options: str) -> None:
    """Options that have no meaning in the chosen mode (per case or whole dataset), named as the user types them."""
    for option in options:
        if getattr(args, option.lstrip("-").replace("-", "_")) not in (None, False):
            raise InputError(f"{option}: {'not used with --dataset' if args.dataset else 'only with --dataset'}")


def _write_dataset_result(result, out: str, overwrite: bool) -> None:
    from .evaluation import write_outputs

    written = write_outputs(result, Path(out), overwrite=overwrite)
    print(json.dumps({key: str(path) for key, path in written.items()}))


def _case_names(text: Optional[str]) -> Optional[list[str]]:
    """``--cases obs000..obs079`` (a numbered range) or ``--cases a,b,c``: the case names to keep (None = all)."""
    if text is None:
        return None
    numbered = re.fullmatch(r"(\D*)(\d+)\.\.(\D*)(\d+)", text)
    if numbered:
        prefix, first, _, last = numbered.groups()
        return [f"{prefix}{n:0{len(first)}d}" for n in range(int(first), int(last) + 1)]
    if ".." in text:
        raise InputError(f"--cases {text}: expected FIRST..LAST with numbered names, e.g. obs000..obs079")
    return [name for name in text.split(",") if name]


def cmd_evaluate_registration(args: argparse.Namespace) -> None:
    if args.dataset:
        from .evaluation import evaluate_registration_dataset

        result = evaluate_registration_dataset(args.dataset, args.predictions, split=args.split, unit=args.unit,
                                               case_names=_case_names(args.cases))
        _write_dataset_result(result, args.out, args.overwrite)
        return
    from .io import read_transform
    from .metrics.registration import registration_metrics

    _require(args, "--fixed-label", "--moving-label")
    _check_outputs(args.overwrite, args.out)
    fixed = _read_channels(args.fixed_label, "--fixed-label")
    moving = _read_channels(args.moving_label, "--moving-label")
    if len(fixed) != len(moving):
        raise InputError(f"--fixed-label has {len(fixed)} channels but --moving-label {len(moving)}")
    transform = read_transform(args.transform, name="--transform") if args.transform else sitk.Transform()
    metrics = {"before": registration_metrics(fixed, moving, sitk.Transform()),
               "after": registration_metrics(fixed, moving, transform)}
    _write_json({**metrics["after"], **metrics}, args.out, args.overwrite)
    print(json.dumps({k: v for k, v in metrics["after"].items() if not isinstance(v, list)}))


def cmd_evaluate_segmentation(args: argparse.Namespace) -> None:
    if args.dataset:
        from .evaluation import evaluate_segmentation_dataset

        _require(args, "--predictions")
        result = evaluate_segmentation_dataset(args.dataset, args.predictions, label_folder=args.label_folder,
                                               split=args.split, case_names=_case_names(args.cases))
        _write_dataset_result(result, args.out, args.overwrite)
        return
    from .io import read_label, read_seg_nrrd
    from .metrics.segmentation import segmentation_metrics

    _require(args, "--pred", "--gt")
    _check_outputs(args.overwrite, args.out)

    def read(path: str, option: str) -> sitk.Image:
        return read_seg_nrrd(path)[0] if path.lower().endswith(".seg.nrrd") else read_label(path, name=option)

    metrics = segmentation_metrics(read(args.pred, "--pred"), read(args.gt, "--gt"))
    _write_json(metrics, args.out, args.overwrite)
    print(json.dumps(metrics))


def cmd_evaluate_detection(args: argparse.Namespace) -> None:
    with contextlib.redirect_stdout(sys.stderr):  # picai_eval prints a banner on import
        from .evaluation import evaluate_detection_dataset

        result = evaluate_detection_dataset(args.predictions, args.labels, glands=args.glands,
                                            threshold=args.threshold, min_overlap=args.min_overlap)
    _write_dataset_result(result, args.out, args.overwrite)


def _check_new_run(config, out: Optional[str], overwrite: bool) -> None:
    """A new run replaces neither an earlier run's checkpoint nor its model unless ``--overwrite`` is given."""
    from .errors import OutputExistsError

    target = Path(out) if out else config.output
    run_dir = config.resolved_run_dir(target)
    last = next(run_dir.glob("**/last.pt"), None) if run_dir.is_dir() else None  # ensembles: one run per member
    if last is not None and not overwrite:
        raise OutputExistsError(f"{last}: an earlier run's checkpoint (pass --resume to go on from it, or "
                                "--overwrite to start again)")
    _check_outputs(overwrite, str(target))


def cmd_train(args: argparse.Namespace) -> None:
    import logging
    import os

    from .training.config import load_config
    from .training.data_config import check_data_paths

    config = load_config(args.config, check_model=False)  # schema and data paths first: fast, before torch
    check_data_paths(config.data)
    if args.resume is None:
        _check_new_run(config, args.out, args.overwrite)
    from .training import train

    main_process = os.environ.get("RANK", "0") in ("", "0")
    if not logging.getLogger().handlers and main_process:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    resume = True if args.resume == "" else args.resume
    path = train(config, out=args.out, resume=resume, device=args.device)
    if main_process:
        print(f"checkpoint written to {path}")


# ------------------------------------------------------------------------------------------------ parser
def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where torch runs (auto: CUDA when available, the CPU if CUDA runs out of memory)")


def _command(sub, name: str, handler: Callable, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(handler=handler)
    return parser


def _demo_parser(sub) -> None:
    p = _command(sub, "demo", cmd_demo, "phantom (or your pair) -> register -> segment -> fuse -> evaluate")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--fixed", help="TRUS volume (default: the built-in phantom)")
    p.add_argument("--moving", help="MRI volume")
    p.add_argument("--fixed-label", help="TRUS label channels (0 gland, 1.. landmarks): gland-driven + evaluated")
    p.add_argument("--moving-label", help="MRI label channels, corresponding to --fixed-label")
    p.add_argument("--seed", type=int, default=0, help="phantom seed")
    p.add_argument("--method", default="bspline", help="registration method (rigid, affine, bspline)")
    p.add_argument("--model", default="trus-unet", help="tumour segmentation model")
    p.add_argument("--weights", help="segmentation checkpoint (default: the bundled weights)")
    _add_device(p)


def _registration_parsers(sub) -> None:
    p = _command(sub, "register", cmd_register, "register MRI (moving) onto TRUS (fixed): one pair, or every case "
                 "of a dataset (--dataset)")
    p.add_argument("--fixed", help="TRUS volume")
    p.add_argument("--moving", help="MRI volume")
    p.add_argument("--fixed-mask", help="TRUS gland mask (with --moving-mask: gland-driven)")
    p.add_argument("--moving-mask", help="MRI gland mask")
    p.add_argument("--method", default="auto",
                   help="rigid, affine or bspline (classical, each includes the ones before; gland-driven with "
                        "masks), attention-reg, vit-affine, ecmca-lstm, localnet, globalnet (learned); auto = "
                        "gland-driven pre-alignment (affine on the given masks; without masks, rigid on the "
                        "glands the gland-trus/gland-mri models predict plus the population gland strain, or "
                        "globalnet when those glands are implausible) then ecmca-lstm, stages without weights "
                        "skipped; nothing runnable: bspline")
    p.add_argument("--weights", help="checkpoint of a learned method")
    p.add_argument("--transform-out", required=True,
                   help="ITK transform, TRUS point -> MRI point (.tfm/.h5); with --dataset a folder of "
                        "CASE.tfm (linear methods) or CASE.h5, as evaluate registration --predictions reads")
    p.add_argument("--warped-out", help="MRI resampled onto the TRUS grid; with --dataset a folder of CASE.nii.gz")
    p.add_argument("--dataset", help="DeepReg/μ-RegPro folder or CSV manifest: register every case (TRUS fixed, "
                                     "MRI moving); a failed case is reported and the others go on")
    p.add_argument("--split", help="with --dataset: μ-RegPro split (train, val, holdout)")
    p.add_argument("--cases", help="with --dataset: case names to keep, FIRST..LAST (e.g. obs080..obs107) or a,b,c")
    p.add_argument("--gland-masks", action="store_true",
                   help="with --dataset: gland-driven, on channel 0 (the gland) of each case's TRUS and MRI label "
                        "files; default image-only")
    p.add_argument("--batch-size", type=int,
                   help="with --dataset: cases per network batch of a learned model (default 4)")
    _add_device(p)

    p = _command(sub, "warp", cmd_warp, "resample an MRI-space image onto a reference grid through a transform")
    p.add_argument("--moving", required=True)
    p.add_argument("--reference", required=True, help="image whose grid the output takes (the TRUS)")
    p.add_argument("--transform", required=True, help="ITK transform, reference point -> moving point")
    p.add_argument("--out", required=True)
    p.add_argument("--label", action="store_true", help="nearest-neighbour interpolation, integer output")

    p = _command(sub, "map-points", cmd_map_points, "map MRI points (targets) into TRUS space")
    p.add_argument("--points", required=True, help="MRI points (.mrk.json or .csv, LPS mm)")
    p.add_argument("--transform", required=True, help="registration result (TRUS point -> MRI point)")
    p.add_argument("--out", required=True, help="TRUS points (.mrk.json or .csv)")


def _other_parsers(sub) -> None:
    p = _command(sub, "phantom", cmd_phantom, "write synthetic MRI/TRUS cases with ground truth (DeepReg layout)")
    p.add_argument("--out", required=True)
    p.add_argument("--cases", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="seed of the first case (case k uses seed + k)")
    p.add_argument("--tumours", type=int, default=1, help="tumours per case")

    p = _command(sub, "segment", cmd_segment,
                 "segment the tumour or the gland; the model decides which images it needs")
    p.add_argument("--trus", help="TRUS volume (trus-unet, gland-trus, concat, reg-enhanced)")
    p.add_argument("--mri", help="T2W MRI volume (gland-mri, csad; with --transform for concat, reg-enhanced)")
    p.add_argument("--adc", help="ADC map in MRI space (csad, optional)")
    p.add_argument("--transform", help="registration, TRUS point -> MRI point (models putting the MRI on the TRUS)")
    p.add_argument("--model", default="trus-unet",
                   help="trus-unet, concat, reg-enhanced (TRUS tumour), csad (MRI lesion), gland-trus, gland-mri "
                        "(output grid: the first input the model takes)")
    p.add_argument("--weights", help="checkpoint (default: the bundled weights)")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold (0..1)")
    p.add_argument("--min-volume", type=float, default=50.0, metavar="MM3",
                   help="smallest kept lesion candidate in mm³ (tumour models; 0 keeps all)")
    p.add_argument("--tta", action="store_true", help="average over the flips the model was trained with")
    p.add_argument("--out", required=True,
                   help="segmentation: .seg.nrrd (named, coloured segments) or a label map (1 gland, k+1 lesion k)")
    p.add_argument("--probabilities-out", help="target probability map (0..1, float) on the output grid")
    p.add_argument("--lesions-out", help="lesion candidates (.json or .csv): volume mL, max probability, centroid")
    _add_device(p)

    p = _command(sub, "train", cmd_train, "train a model from a YAML config")
    p.add_argument("config", help="training config (YAML), e.g. MRITRUSFusionLib/configs/trus-unet.yaml")
    p.add_argument("--out", help="checkpoint path (default: the config's output)")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                   help="go on from the run folder's last.pt (or from CHECKPOINT) exactly where it stopped")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"),
                   help="where torch runs (default: the config's device; auto: CUDA when available)")


def _bench_parser(sub) -> None:
    p = _command(sub, "bench", cmd_bench, "time and accuracy of the registration methods vs SimpleITK B-spline")
    p.add_argument("--out", required=True, help="bench.json")
    p.add_argument("--png", help="plot of times, accuracy and scaling (default: next to --out)")
    p.add_argument("--phantoms", type=int, default=2, help="phantom cases")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=96, help="phantom TRUS grid size (voxels per side)")
    p.add_argument("--dataset", help="also these real cases (needs --cases)")
    p.add_argument("--cases", help="case names, FIRST..LAST or a,b,c (never the held-out ones)")
    p.add_argument("--repeats", type=int, default=1, help="runs per case; the fastest is kept")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before a run is recorded as failed")
    p.add_argument("--quick", action="store_true", help="scaling at small sizes only (a smoke test)")
    p.add_argument("--no-scaling", action="store_true", help="skip the 64³..256³ scaling curves")
    p.add_argument("--no-training", action="store_true", help="skip the training-throughput measurement")
    p.add_argument("--training-size", type=int, default=96,
                   help="grid side (voxels) of the training-throughput measurement (ecmca-lstm on a phantom)")


def _evaluate_parsers(sub) -> None:
    evaluate = sub.add_parser("evaluate", help="metrics against ground truth, one case or a whole dataset")
    kinds = evaluate.add_subparsers(dest="what", required=True, metavar="{registration,segmentation,detection}")

    def dataset_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", help="DeepReg/μ-RegPro folder or CSV manifest: evaluate every case")
        p.add_argument("--split", help="μ-RegPro split (train, val, holdout)")
        p.add_argument("--cases", help="case names to keep: FIRST..LAST (e.g. obs000..obs079) or a,b,c")
        p.add_argument("--out", required=True,
                       help="metrics JSON (one case) or folder for per_case.csv, summary.json, report.png")

    p = _command(kinds, "registration", cmd_evaluate_registration, "gland Dice/HD95/ASD, landmark TRE, Jacobian")
    p.add_argument("--fixed-label", help="TRUS labels: 4D channels (0 gland, 1.. landmarks) or 3D gland")
    p.add_argument("--moving-label", help="MRI labels, same channels")
    p.add_argument("--transform", help="TRUS point -> MRI point (default: identity)")
    p.add_argument("--predictions", help="with --dataset: folder of CASE.h5|.tfm transforms (default: identity)")
    p.add_argument("--unit", choices=("mm", "vox"), default="mm", help="also report μ-RegPro voxel units (vox)")
    dataset_options(p)
    p = _command(kinds, "segmentation", cmd_evaluate_segmentation, "Dice, IoU, HD95, ASD, volume difference")
    p.add_argument("--pred", help="predicted segmentation (.seg.nrrd or label map)")
    p.add_argument("--gt", help="ground-truth segmentation")
    p.add_argument("--predictions", help="with --dataset: folder of CASE.seg.nrrd|.nii.gz")
    p.add_argument("--label-folder", default="fixed_tumour_labels", help="with --dataset: ground-truth folder")
    dataset_options(p)
    p = _command(kinds, "detection", cmd_evaluate_detection, "PI-CAI AUROC/AP and seed-000 lesion/patient rules")
    p.add_argument("--predictions", required=True, help="folder of CASE.nii.gz detection maps (0..1)")
    p.add_argument("--labels", required=True, help="folder of CASE.nii.gz binary lesion labels")
    p.add_argument("--glands", help="folder of gland masks (enables the sextant rules)")
    p.add_argument("--threshold", type=float, default=0.5, help="confidence >= this is tumour (sextant rules)")
    p.add_argument("--min-overlap", type=float, default=0.1, help="PI-CAI hit criterion (IoU)")
    p.add_argument("--out", required=True, help="folder for per_case.csv, summary.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mritrus-fusion", description="Prostate MRI-TRUS fusion: register MRI onto TRUS, segment, fuse, evaluate, train.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--progress", choices=("bar", "json", "none"), help="progress display (default: bar)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _demo_parser(sub)
    _other_parsers(sub)
    _registration_parsers(sub)
    _evaluate_parsers(sub)
    _bench_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.progress:
        progress.set_mode(args.progress)
    try:
        args.handler(args)
    except FusionError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # an unexpected failure: still one line, the traceback with --debug
        if args.debug:
            raise
        print(f"error: {type(error).__name__}: {error} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILURE
    return 0
