"""Benchmark: time, peak memory and accuracy of our registration against the classical toolkits.

A **contender** is any callable ``(fixed, moving, fixed_mask, moving_mask) -> sitk.Transform`` returning the
TRUS (fixed) point → MRI (moving) point transform; masks are the gland masks (channel 0) and a contender may
ignore them. The registry is a plain ``dict`` name → contender; :func:`default_contenders` builds it, and more
methods (learned registration) join by adding entries::

    contenders = default_contenders()
    contenders["attention-reg"] = functools.partial(my_register, weights=path)   # must be picklable

Each run happens in a fresh Python child process (``sys.executable``; the contender and its inputs travel as
a pickle in a temporary file), so contenders must be picklable: functions of an importable module, or
``functools.partial`` of them (not lambdas, not functions of a script's ``__main__``). In the child we time the
call alone (``time.perf_counter``) and read the child's own peak resident set size after it (Linux: ``VmHWM``,
reset just before the call; elsewhere ``getrusage(RUSAGE_SELF).ru_maxrss``). ``baseline_rss_mib`` is the
resident size just before the call (interpreter, imports, inputs), so ``peak_rss_mib - baseline_rss_mib`` is
what the registration itself added. Accuracy (TRE, Dice) is measured in the parent with
:func:`~MRITRUSFusionLib.metrics.registration.registration_metrics` on the returned transform.

The reference, :data:`REFERENCE` (``simpleitk-bspline``), is the textbook SimpleITK pipeline of the SimpleITK
notebooks (geometry-centred initialiser, affine with Mattes MI, then a 3-level B-spline with L-BFGS-B on the
full-resolution images). Ratios are *reference / contender*: ``time_ratio_vs_simpleitk`` > 1 means faster than
SimpleITK, ``tre_ratio_vs_simpleitk`` > 1 means a smaller TRE than SimpleITK.

Optional contenders (``ants-syn`` from ``antspyx``, ``elastix-bspline`` from ``itk-elastix``) are registered as
:class:`Unavailable` when their package is missing and recorded as ``{"skipped": "<package> not installed"}``.

Units are in the keys: ``time_s``, ``peak_rss_mib``, ``tre_mean_mm``, ``spacing_mm``. Typical use::

    result = run_benchmark(phantom_cases(2) + dataset_cases(folder, ["obs000", "obs001"]))
    write_bench(result, "bench.json", "bench.png", overwrite=False, scaling=scaling_curve())
    print(format_table(result))
"""

from __future__ import annotations

import datetime
import functools
import importlib.util
import json
import math
import os
import pickle
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

import numpy as np
import SimpleITK as sitk

from . import progress
from .errors import FusionError, InputError, OutputExistsError
from .registration.classical import METHODS as CLASSICAL_METHODS
from .registration.classical import ClassicalOptions, register_classical

#: A registration under test: ``(fixed, moving, fixed_mask, moving_mask) -> fixed→moving transform``.
Contender = Callable[[sitk.Image, sitk.Image, Optional[sitk.Image], Optional[sitk.Image]], sitk.Transform]

#: The contender every ratio is relative to.
REFERENCE = "simpleitk-bspline"
#: Field of view (mm) of the scaling phantoms: trus spacing = FOV / n for an n³ grid (0.8 mm at 96³).
SCALING_FOV_MM = 76.8
SCALING_SIZES = (64, 128, 192, 256)
QUICK_SCALING_SIZES = (32, 48)
#: Contenders of the default scaling curve: the deformable ones.
SCALING_CONTENDERS = ("classical-bspline-gland", "classical-bspline-image", "learned-ecmca-lstm", "learned-auto",
                      REFERENCE, "ants-syn", "elastix-bspline")
SCHEMA = "mritrus-fusion-bench/1"
#: Contenders whose name starts so are also timed warm (a second call in the same process): their cold time is
#: mostly importing torch and loading weights, which a session (Slicer, a batch of cases) pays once.
WARM_PREFIX = "learned-"


class ContenderUnavailable(FusionError):
    """A contender cannot run here (its optional package is missing); it is recorded as skipped."""


@dataclass(frozen=True)
class Unavailable:
    """Registry entry of a contender whose package is missing: recorded as ``{"skipped": reason}``."""

    reason: str

    def __call__(self, *args: Any) -> sitk.Transform:
        raise ContenderUnavailable(self.reason)


@dataclass
class BenchCase:
    """One MRI–TRUS pair with its label channels (0 = gland, 1.. = landmarks), fixed = TRUS."""

    name: str
    source: str
    fixed: sitk.Image
    moving: sitk.Image
    fixed_channels: list[sitk.Image]
    moving_channels: list[sitk.Image]

    @property
    def fixed_mask(self) -> sitk.Image:
        return self.fixed_channels[0]

    @property
    def moving_mask(self) -> sitk.Image:
        return self.moving_channels[0]


# --------------------------------------------------------------------------------------------- contenders


@dataclass
class SimpleITKBSplineOptions:
    """Settings of the reference pipeline, as in the SimpleITK registration notebooks (60, 65)."""

    histogram_bins: int = 50
    #: Random metric sampling fraction of the notebooks (1 % of the fixed voxels).
    sampling_percentage: float = 0.01
    affine_iterations: int = 100
    bspline_iterations: int = 100
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_mm: tuple[float, ...] = (2.0, 1.0, 0.0)
    #: Control-point spacing; the same as our classical B-spline (``ClassicalOptions.bspline_grid_spacing_mm``).
    grid_spacing_mm: float = 30.0
    #: Seed of the random metric sampling; SimpleITK reads 0 (``sitkWallClock``) as "seed from the clock".
    seed: int = 1


def _reference_method(options: SimpleITKBSplineOptions) -> sitk.ImageRegistrationMethod:
    """Mattes MI, random sampling, linear interpolation and a 3-level pyramid, as in the notebooks."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=options.histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(options.sampling_percentage, options.seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel(list(options.shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(options.smoothing_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def simpleitk_bspline(fixed: sitk.Image, moving: sitk.Image, fixed_mask: Optional[sitk.Image] = None,
                      moving_mask: Optional[sitk.Image] = None,
                      options: Optional[SimpleITKBSplineOptions] = None) -> sitk.Transform:
    """The reference: a plain SimpleITK affine + B-spline registration of the full-resolution images.

    Geometry-centred initialiser, affine with Mattes MI and gradient descent, then a cubic B-spline with
    L-BFGS-B, each over 3 pyramid levels; no cropping, no masks (they are ignored). Returns the composite
    ``affine(bspline(x))``, fixed point → moving point.
    """
    options = options or SimpleITKBSplineOptions()
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    affine = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                               sitk.CenteredTransformInitializerFilter.GEOMETRY)
    method = _reference_method(options)
    method.SetOptimizerAsGradientDescent(learningRate=1.0, numberOfIterations=options.affine_iterations,
                                         convergenceMinimumValue=1e-6, convergenceWindowSize=10)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(affine, inPlace=True)
    method.Execute(fixed, moving)

    extent = np.array(fixed.GetSize()) * np.array(fixed.GetSpacing())
    mesh = [max(int(e / options.grid_spacing_mm + 0.5), 1) for e in extent]
    bspline = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
    method = _reference_method(options)
    method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=options.bspline_iterations,
                                maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=1000,
                                costFunctionConvergenceFactor=1e7)
    method.SetMovingInitialTransform(affine)
    method.SetInitialTransform(bspline, inPlace=True)
    method.Execute(fixed, moving)
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(affine)
    composite.AddTransform(bspline)  # applied first: T(x) = affine(bspline(x))
    return composite


def classical(fixed: sitk.Image, moving: sitk.Image, fixed_mask: Optional[sitk.Image],
              moving_mask: Optional[sitk.Image], *, method: str, gland_driven: bool,
              options: Optional[ClassicalOptions] = None) -> sitk.Transform:
    """Our classical registration (``register_classical``), gland-driven with the masks or image-only without."""
    if gland_driven:
        return register_classical(fixed, moving, method, fixed_mask, moving_mask, options=options)
    return register_classical(fixed, moving, method, options=options)


def _to_itk(image: sitk.Image):
    """A float32 ``itk.Image`` with the geometry of ``image`` (itk-elastix is imported by the caller)."""
    import itk

    converted = itk.image_from_array(sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32)))
    converted.SetOrigin(image.GetOrigin())
    converted.SetSpacing(image.GetSpacing())
    converted.SetDirection(itk.matrix_from_array(np.array(image.GetDirection()).reshape(3, 3)))
    return converted


def _field_transform(displacement: np.ndarray, reference: sitk.Image) -> sitk.Transform:
    """A displacement-field transform (x → x + u(x)) from a (z, y, x, 3) array on the grid of ``reference``."""
    image = sitk.GetImageFromArray(np.asarray(displacement, dtype=np.float64), isVector=True)
    image.CopyInformation(reference)
    return sitk.DisplacementFieldTransform(image)


def elastix_bspline(fixed: sitk.Image, moving: sitk.Image, fixed_mask: Optional[sitk.Image] = None,
                    moving_mask: Optional[sitk.Image] = None) -> sitk.Transform:
    """Elastix (itk-elastix) with its default affine then B-spline parameter maps, image-only.

    The result is elastix's deformation field on the fixed grid (elastix transforms map fixed points to
    moving points, as ours do), returned as a ``DisplacementFieldTransform``.
    """
    try:
        import itk
    except ImportError as error:
        raise ContenderUnavailable("itk-elastix not installed") from error
    parameters = itk.ParameterObject.New()
    for name in ("affine", "bspline"):
        parameters.AddParameterMap(parameters.GetDefaultParameterMap(name))
    fixed_itk, moving_itk = _to_itk(fixed), _to_itk(moving)
    with tempfile.TemporaryDirectory(prefix="mritrus-elastix-") as folder:  # transformix writes files there
        _, result = itk.elastix_registration_method(fixed_itk, moving_itk, parameter_object=parameters,
                                                    log_to_console=False, output_directory=folder)
        field_image = itk.transformix_deformation_field(moving_itk, result, log_to_console=False,
                                                        output_directory=folder)
        return _field_transform(itk.array_from_image(field_image), fixed)


def ants_syn(fixed: sitk.Image, moving: sitk.Image, fixed_mask: Optional[sitk.Image] = None,
             moving_mask: Optional[sitk.Image] = None, type_of_transform: str = "SyN") -> sitk.Transform:
    """ANTs (antspyx) ``SyN`` (affine + symmetric normalisation, Mattes MI), image-only.

    ANTs composes its forward transforms into one displacement field on the fixed grid (fixed point →
    moving point), returned as a ``DisplacementFieldTransform``.
    """
    try:
        import ants
    except ImportError as error:
        raise ContenderUnavailable("antspyx not installed") from error

    def to_ants(image: sitk.Image):
        array = np.transpose(sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32)), (2, 1, 0))
        return ants.from_numpy(np.ascontiguousarray(array), origin=list(image.GetOrigin()),
                               spacing=list(image.GetSpacing()),
                               direction=np.array(image.GetDirection()).reshape(3, 3))

    fixed_ants, moving_ants = to_ants(fixed), to_ants(moving)
    with tempfile.TemporaryDirectory(prefix="mritrus-ants-") as folder:  # ANTs' transform files go here
        registration = ants.registration(fixed=fixed_ants, moving=moving_ants, type_of_transform=type_of_transform,
                                         outprefix=str(Path(folder) / "reg_"))
        path = ants.apply_transforms(fixed=fixed_ants, moving=moving_ants,
                                     transformlist=registration["fwdtransforms"],
                                     compose=str(Path(folder) / "field"))
        field_image = sitk.ReadImage(str(path), sitk.sitkVectorFloat64)
    return _field_transform(sitk.GetArrayFromImage(field_image), field_image)


def learned(fixed: sitk.Image, moving: sitk.Image, fixed_mask: Optional[sitk.Image],
            moving_mask: Optional[sitk.Image], *, method: str, device: str = "cpu") -> sitk.Transform:
    """A learned method (or the learned ``auto`` chain) of :mod:`.registration.methods`, image-only."""
    from .registration.methods import register

    return register(fixed, moving, method, device=device)


def learned_contenders(device: str = "cpu") -> dict[str, Contender]:
    """``learned-<name>`` for every learned model with weights here, ``learned-attention-reg`` and
    ``learned-auto`` (the chain of :data:`.registration.methods.AUTO_CHAIN`) when its stages have weights."""
    from .registration.learned.attention_reg_infer import default_weights_path
    from .registration.learned.models import available_methods
    from .registration.methods import AUTO_CHAIN

    names = available_methods()
    if default_weights_path().is_file():
        names.insert(0, "attention-reg")
    if any(name in names for alternatives in AUTO_CHAIN for name in alternatives):
        names.append("auto")
    return {f"learned-{name}": functools.partial(learned, method=name, device=device) for name in names}


def _optional(module: str, package: str, contender: Contender) -> Contender:
    """``contender`` when ``module`` is importable, else :class:`Unavailable` naming ``package``."""
    return contender if importlib.util.find_spec(module) is not None else Unavailable(f"{package} not installed")


def default_contenders(classical_options: Optional[ClassicalOptions] = None,
                       reference_options: Optional[SimpleITKBSplineOptions] = None) -> dict[str, Contender]:
    """The registry: ``classical-{rigid,affine,bspline}-{gland,image}``, the learned methods with weights
    (:func:`learned_contenders`, on the CPU), ``simpleitk-bspline``, ``ants-syn``, ``elastix-bspline`` (the
    last two :class:`Unavailable` when not installed). Add entries to extend it."""
    contenders: dict[str, Contender] = {}
    for method in CLASSICAL_METHODS:
        for mode, gland_driven in (("gland", True), ("image", False)):
            contenders[f"classical-{method}-{mode}"] = functools.partial(
                classical, method=method, gland_driven=gland_driven, options=classical_options)
    contenders.update(learned_contenders())
    contenders[REFERENCE] = functools.partial(simpleitk_bspline, options=reference_options)
    contenders["ants-syn"] = _optional("ants", "antspyx", ants_syn)
    contenders["elastix-bspline"] = _optional("itk", "itk-elastix", elastix_bspline)
    return contenders


# -------------------------------------------------------------------------------------------------- cases


def phantom_case(seed: int, size: int = 96, fov_mm: float = SCALING_FOV_MM) -> BenchCase:
    """A phantom with an ``size``³ TRUS grid of spacing ``fov_mm / size`` (the MRI grid is the default one)."""
    from .phantom import generate_phantom

    spacing = fov_mm / size
    case = generate_phantom(seed=seed, trus_size=(size,) * 3, trus_spacing=(spacing,) * 3)
    return BenchCase(f"phantom-s{seed}-{size}", "phantom", case.trus, case.mri, case.trus_labels, case.mri_labels)


def phantom_cases(n: int = 2, seed: int = 0, size: int = 96) -> list[BenchCase]:
    """``n`` phantom cases of seeds ``seed, seed + 1, ...`` on ``size``³ TRUS grids (76.8 mm field of view)."""
    return [phantom_case(seed + k, size) for k in range(n)]


def dataset_cases(path: str | os.PathLike, names: Sequence[str]) -> list[BenchCase]:
    """The cases ``names`` (explicit, never a default) of the dataset at ``path``, with their labels.

    Raises:
        InputError: no names, a name not in the dataset, or a case without labels.
    """
    from .io import open_dataset, read_label_channels, read_volume

    if not names:
        raise InputError(f"dataset {path}: name the cases to benchmark (--cases)")
    available = {case.name: case for case in open_dataset(path)}
    missing = [name for name in names if name not in available]
    if missing:
        raise InputError(f"dataset {path}: no case named {', '.join(missing)}")
    cases = []
    for name in names:
        case = available[name]
        if case.fixed_label is None or case.moving_label is None:
            raise InputError(f"dataset {path}: case {name} has no fixed and moving labels to measure TRE and Dice")
        cases.append(BenchCase(
            name, str(path),
            read_volume(case.fixed_image, name=f"case {name} fixed image"),
            read_volume(case.moving_image, name=f"case {name} moving image"),
            read_label_channels(case.fixed_label, name=f"case {name} fixed label"),
            read_label_channels(case.moving_label, name=f"case {name} moving label")))
    return cases


# -------------------------------------------------------------------------------- isolated, measured runs


def _status_mib(field: str) -> Optional[float]:
    """``VmRSS`` / ``VmHWM`` of this process from ``/proc/self/status`` (MiB), None where there is no procfs."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def _reset_peak_rss() -> None:
    """Reset this process's peak RSS to its current RSS (Linux ``clear_refs`` 5); a no-op elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


def _peak_rss_mib() -> float:
    """Peak resident set size of this process (MiB).

    Linux: ``VmHWM`` of the process's own memory map. ``getrusage().ru_maxrss`` is not used there because
    across fork/exec it inherits the parent's peak, so a small child would report the parent's size.
    Elsewhere ``ru_maxrss`` (bytes on macOS, KiB otherwise).
    """
    peak = _status_mib("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024.0


def _cuda():
    """The ``torch.cuda`` module when torch is already loaded and a GPU is present, else None."""
    torch = sys.modules.get("torch")
    return torch.cuda if torch is not None and torch.cuda.is_available() else None


def _worker(job, result_path: str) -> None:
    """Child process: run the pickled job ``(contender, inputs, return_transform, warm)`` read from the open
    file ``job`` once (twice when ``warm``); pickle the report (time, memory, transform, or skipped/error) to
    ``result_path``."""
    progress.set_mode("none")
    try:
        contender, inputs, return_transform, warm = pickle.load(job)
        job.close()
        cuda = _cuda()
        if cuda is not None:
            cuda.reset_peak_memory_stats()
        _reset_peak_rss()
        baseline = _status_mib("VmRSS") or _peak_rss_mib()
        start = time.perf_counter()
        transform = contender(*inputs)
        elapsed = time.perf_counter() - start
        report: dict[str, Any] = {"time_s": elapsed, "peak_rss_mib": _peak_rss_mib(), "baseline_rss_mib": baseline}
        if warm:  # again in the same process: imports, weights and kernels are loaded (a session's later cases)
            start = time.perf_counter()
            contender(*inputs)
            report["warm_time_s"] = time.perf_counter() - start
        cuda = _cuda()  # the contender may have loaded torch
        if cuda is not None:
            report["peak_gpu_mib"] = cuda.max_memory_allocated() / 2**20
        if return_transform:
            report["transform"] = transform
    except ContenderUnavailable as error:
        report = {"skipped": str(error)}
    except BaseException as error:  # noqa: BLE001 - reported; the parent goes on with the next run
        report = {"error": f"{type(error).__name__}: {error}".strip()}
    with open(result_path, "wb") as file:
        pickle.dump(report, file, protocol=pickle.HIGHEST_PROTOCOL)


#: The child's program: put the parent's ``sys.path`` first (first pickle of the job file), then run the job.
_CHILD_CODE = ("import pickle, sys; job = open(sys.argv[1], 'rb'); sys.path[:0] = pickle.load(job); "
               "from MRITRUSFusionLib.bench import _worker; _worker(job, sys.argv[2])")


def measure(contender: Contender, fixed: sitk.Image, moving: sitk.Image, fixed_mask: Optional[sitk.Image],
            moving_mask: Optional[sitk.Image], timeout_s: Optional[float] = None,
            return_transform: bool = True, warm: bool = False) -> dict[str, Any]:
    """Run ``contender`` once in a fresh Python child process (``time_s``: cold, with imports, weight loading
    and kernel warm-up); with ``warm``, a second time in that process (``warm_time_s``).

    Returns ``{"time_s", "peak_rss_mib", "baseline_rss_mib"[, "warm_time_s"][, "peak_gpu_mib"][, "transform"]}``,
    or ``{"skipped": reason}`` / ``{"error": message}`` (an exception, a crash, or ``timeout_s`` exceeded).

    Raises:
        InputError: ``contender`` cannot be pickled (a lambda or a function of ``__main__``).
    """
    if isinstance(contender, Unavailable):
        return {"skipped": contender.reason}
    try:
        job = pickle.dumps((contender, (fixed, moving, fixed_mask, moving_mask), return_transform, warm),
                           protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError) as error:
        raise InputError(f"contender {contender!r} cannot be sent to a child process ({error}); use a function "
                         f"of an importable module or a functools.partial of one") from None
    with tempfile.TemporaryDirectory(prefix="mritrus-bench-") as folder:
        job_path, result_path = Path(folder) / "job.pkl", Path(folder) / "result.pkl"
        with open(job_path, "wb") as file:
            pickle.dump(list(sys.path), file)
            file.write(job)
        del job
        environment_variables = {**os.environ, progress.ENV_MODE: "none"}
        try:
            finished = subprocess.run([sys.executable, "-c", _CHILD_CODE, str(job_path), str(result_path)],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      env=environment_variables, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout_s:g} s", "killed": True}
        if result_path.exists():
            with open(result_path, "rb") as file:
                return pickle.load(file)
        lines = finished.stderr.decode(errors="replace").strip().splitlines()
        return {"error": f"child process died (exit code {finished.returncode}"
                         + ("; out of memory?" if finished.returncode < 0 else "")
                         + (f"): {lines[-1]}" if lines else ")"), "killed": True}


# ---------------------------------------------------------------------------------------------- benchmark


def _accuracy(case: BenchCase, transform: sitk.Transform) -> dict[str, Any]:
    """Gland Dice and landmark TRE (and what else :func:`registration_metrics` gives) of one transform."""
    from .metrics.registration import registration_metrics

    metrics = registration_metrics(case.fixed_channels, case.moving_channels, transform)
    keys = ("dice", "hd95_mm", "tre_mean_mm", "tre_median_mm", "tre_mm", "folding_fraction")
    return {key: metrics[key] for key in keys if key in metrics}


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _summary(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean time, TRE and Dice over the successful runs, the largest peak RSS, and run counts."""
    done = [run for run in runs if "time_s" in run]
    summary: dict[str, Any] = {
        "time_s": _mean([run["time_s"] for run in done]),
        "peak_rss_mib": max((run["peak_rss_mib"] for run in done), default=None),
        "tre_mean_mm": _mean([run.get("tre_mean_mm") for run in done]),
        "dice": _mean([run.get("dice") for run in done]),
        "n_cases": len(done),
        "n_failed": len(runs) - len(done),
    }
    warm = [run["warm_time_s"] for run in done if "warm_time_s" in run]
    if warm:
        summary["warm_time_s"] = _mean(warm)
    gpu = [run["peak_gpu_mib"] for run in done if "peak_gpu_mib" in run]
    if gpu:
        summary["peak_gpu_mib"] = max(gpu)
    return summary


def _ratio(reference: Optional[float], value: Optional[float]) -> Optional[float]:
    return reference / value if reference is not None and value else None


def _add_ratios(contenders: dict[str, dict[str, Any]], reference: str) -> None:
    """``time_ratio_vs_simpleitk`` and ``tre_ratio_vs_simpleitk`` (reference / contender) in every summary."""
    base = contenders.get(reference, {}).get("summary", {})
    for entry in contenders.values():
        if "summary" in entry:
            entry["summary"]["time_ratio_vs_simpleitk"] = _ratio(base.get("time_s"), entry["summary"]["time_s"])
            entry["summary"]["tre_ratio_vs_simpleitk"] = _ratio(base.get("tre_mean_mm"),
                                                                entry["summary"]["tre_mean_mm"])


def _case_record(case: BenchCase) -> dict[str, Any]:
    """Grid of the case and its accuracy before registration (identity transform)."""
    before = _accuracy(case, sitk.Transform())
    return {"name": case.name, "source": case.source, "fixed_size": list(case.fixed.GetSize()),
            "fixed_spacing_mm": list(case.fixed.GetSpacing()), "moving_size": list(case.moving.GetSize()),
            "moving_spacing_mm": list(case.moving.GetSpacing()),
            "dice_before": before["dice"], "tre_before_mm": before.get("tre_mean_mm")}


def _package_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment(device: str = "cpu") -> dict[str, Any]:
    """Machine, thread counts and library versions of this run."""
    info: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "simpleitk_threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
        "simpleitk": sitk.Version.VersionString(), "numpy": np.__version__, "device": device,
        "torch": None, "torch_threads": None, "gpu": None,
        "antspyx": _package_version("antspyx"), "itk-elastix": _package_version("itk-elastix"),
    }
    try:
        import torch
    except ImportError:
        return info
    info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_benchmark(cases: Sequence[BenchCase], contenders: Optional[Mapping[str, Contender]] = None,
                  repeats: int = 1, timeout_s: Optional[float] = None, reference: str = REFERENCE,
                  device: str = "cpu") -> dict[str, Any]:
    """Run every contender on every case ``repeats`` times, each run in a fresh child process.

    Per run: ``time_s`` (the fastest repeat; all in ``times_s``), ``peak_rss_mib`` (largest over repeats),
    ``baseline_rss_mib``, and the accuracy (``tre_mean_mm``, ``dice``, ...; mean over repeats).
    Per contender, ``summary``: means over cases of time, TRE and Dice, the largest peak RSS, and the ratios
    to ``reference``. A missing optional package gives ``{"skipped": reason}``; a failed run ``{"error": ...}``.
    """
    if repeats < 1:
        raise InputError(f"repeats: need at least 1, got {repeats}")
    contenders = dict(default_contenders() if contenders is None else contenders)
    result: dict[str, Any] = {"schema": SCHEMA, "environment": environment(device), "reference": reference,
                              "repeats": repeats, "cases": [_case_record(case) for case in cases], "contenders": {}}
    runnable = {name: fn for name, fn in contenders.items() if not isinstance(fn, Unavailable)}
    with progress.stage("bench", total=max(len(runnable) * len(cases) * repeats, 1)) as bar:
        for name, contender in contenders.items():
            if isinstance(contender, Unavailable):
                result["contenders"][name] = {"skipped": contender.reason}
                continue
            runs, skipped = [], None
            for case in cases:
                reports = []
                for _ in range(repeats):
                    reports.append(measure(contender, case.fixed, case.moving, case.fixed_mask, case.moving_mask,
                                           timeout_s, warm=name.startswith(WARM_PREFIX)))
                    bar.advance(message=f"{name} {case.name}")
                    if "time_s" not in reports[-1]:
                        break
                skipped = skipped or reports[-1].get("skipped")
                if skipped:
                    break
                runs.append(_run_record(case, reports))
            result["contenders"][name] = {"skipped": skipped} if skipped else {"runs": runs, "summary": _summary(runs)}
    _add_ratios(result["contenders"], reference)
    return result


def _run_record(case: BenchCase, reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One contender on one case from its repeats (an error in any repeat makes the run an error)."""
    if "time_s" not in reports[-1]:
        return {"case": case.name, "error": reports[-1].get("error", "no result"),
                **({"killed": True} if reports[-1].get("killed") else {})}
    times = [report["time_s"] for report in reports]
    record: dict[str, Any] = {"case": case.name, "time_s": min(times), "times_s": times,
                              "peak_rss_mib": max(report["peak_rss_mib"] for report in reports),
                              "baseline_rss_mib": reports[0]["baseline_rss_mib"]}
    if all("warm_time_s" in report for report in reports):
        record["warm_time_s"] = min(report["warm_time_s"] for report in reports)
    if any("peak_gpu_mib" in report for report in reports):
        record["peak_gpu_mib"] = max(report.get("peak_gpu_mib", 0.0) for report in reports)
    try:
        accuracies = [_accuracy(case, report["transform"]) for report in reports]
    except FusionError as error:
        record["accuracy_error"] = str(error)
        return record
    for key in accuracies[0]:  # mean over repeats: a multi-threaded optimiser need not repeat itself exactly
        values = np.array([accuracy[key] for accuracy in accuracies], dtype=float)
        record[key] = values.mean(axis=0).tolist()
    if len(accuracies) > 1 and "tre_mean_mm" in accuracies[0]:
        record["tre_mean_mm_repeats"] = [accuracy["tre_mean_mm"] for accuracy in accuracies]
    return record


def scaling_curve(sizes: Sequence[int] = SCALING_SIZES, contenders: Optional[Mapping[str, Contender]] = None,
                  seed: int = 0, quick: bool = False, max_size: Optional[int] = None,
                  timeout_s: Optional[float] = None) -> dict[str, Any]:
    """Time and peak RAM of each contender on one phantom per TRUS grid size ``n``³ (spacing 76.8 mm / n).

    ``quick`` replaces ``sizes`` by (32, 48); ``max_size`` drops larger sizes. ``contenders`` defaults to the
    deformable ones (:data:`SCALING_CONTENDERS`). A failure is recorded as an error; after a timeout or a
    killed child (out of memory) the contender is not run at larger sizes.
    """
    sizes = [int(n) for n in (QUICK_SCALING_SIZES if quick else sizes) if max_size is None or n <= max_size]
    if contenders is None:
        contenders = {name: fn for name, fn in default_contenders().items() if name in SCALING_CONTENDERS}
    result: dict[str, Any] = {"fov_mm": SCALING_FOV_MM, "sizes": sizes, "contenders": {}}
    entries: dict[str, dict[str, Any]] = {}
    for name, fn in contenders.items():
        entries[name] = {"skipped": fn.reason} if isinstance(fn, Unavailable) else {"runs": []}
    with progress.stage("scaling", total=max(len(sizes) * len(contenders), 1)) as bar:
        for size in sizes:
            pending = [name for name, entry in entries.items()
                       if "runs" in entry and not any(run.get("killed") for run in entry["runs"])]
            case = phantom_case(seed, size) if pending else None
            for name in pending:
                report = measure(contenders[name], case.fixed, case.moving, case.fixed_mask, case.moving_mask,
                                 timeout_s, return_transform=False, warm=name.startswith(WARM_PREFIX))
                bar.advance(message=f"{name} {size}^3")
                if "skipped" in report:
                    entries[name] = {"skipped": report["skipped"]}
                    continue
                entries[name]["runs"].append({"size": size, "spacing_mm": SCALING_FOV_MM / size,
                                              "n_voxels": size**3, **report})
            del case
    result["contenders"] = entries
    return result


# ------------------------------------------------------------------------------------------------ outputs


def training_throughput(model: str = "ecmca-lstm", size: int = 96, steps: int = 3, batch_size: int = 1,
                        device: str = "cpu") -> dict[str, Any]:
    """Training speed (samples/s) of learned registration ``model`` on ``size``³ phantom pairs, via the trainer.

    A few steps of the real loop (data, augmentation, forward, loss, backward, optimiser) on one phantom; the
    first step (allocation warm-up) is included, so the figure is a slight underestimate.
    """
    import torch

    from .training import train
    from .training.config import config_from_dict

    terms = {"ecmca-lstm": [{"name": "ecmca"}], "vit-affine": [{"name": "vit-affine"}]}.get(
        model, [{"name": "weighted-dice"}, {"name": "bending", "weight": 0.5}])
    with tempfile.TemporaryDirectory() as folder:
        config = config_from_dict({
            "model": {"name": model}, "loss": {"name": "terms", "terms": terms},
            "data": {"source": "phantom", "count": 1}, "patch_size": [size] * 3, "spacing_mm": 80.0 / size,
            "iterations": steps, "batch_size": batch_size, "device": device, "log_every": 0,
            "checkpoint_every": 0, "output": str(Path(folder) / "model.pt")})
        samples_per_s = float(torch.load(train(config), weights_only=True)["samples_per_s"])
    return {"model": model, "size": size, "batch_size": batch_size, "steps": steps, "device": device,
            "threads": torch.get_num_threads(), "samples_per_s": samples_per_s}


def _json_safe(value: Any) -> Any:
    """``value`` with NaN/Inf floats as None and NumPy scalars as Python numbers (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _figure(result: Mapping[str, Any]):
    """The figure: (a) time and TRE per contender with ratios, (b) time and peak RAM vs grid size (log-log)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 9), layout="constrained")
    axes = figure.subplots(2, 2)
    _plot_bars(axes[0], result)
    _plot_scaling(axes[1], result.get("scaling"))
    return figure


def _plot_bars(axes, result: Mapping[str, Any]) -> None:
    """Bar charts of mean time (log scale) and mean TRE per contender, labelled with the ratios."""
    summaries = {name: entry["summary"] for name, entry in result.get("contenders", {}).items()
                 if "summary" in entry and entry["summary"]["time_s"] is not None}
    names = list(summaries)
    positions = np.arange(len(names))
    reference = result.get("reference", REFERENCE)
    colours = ["tab:red" if name == reference else "tab:blue" for name in names]
    panels = (("time_s", "time_ratio_vs_simpleitk", "time per case (s)", "(a) time"),
              ("tre_mean_mm", "tre_ratio_vs_simpleitk", "TRE mean (mm)", "(a) accuracy"))
    for ax, (key, ratio_key, label, title) in zip(axes, panels):
        values = [summaries[name][key] if summaries[name][key] is not None else np.nan for name in names]
        bars = ax.bar(positions, values, color=colours)
        for bar, name in zip(bars, names):
            ratio = summaries[name].get(ratio_key)
            if ratio is not None and np.isfinite(bar.get_height()):
                ax.annotate(f"×{ratio:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=8)
        ax.set_xticks(positions, names, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.set_title(f"{title} per contender (×: {reference} / contender, > 1 is better)", fontsize=9)
        if key == "time_s" and names:
            ax.set_yscale("log")
        if key == "tre_mean_mm":
            before = _mean([case.get("tre_before_mm") for case in result.get("cases", [])])
            if before is not None:
                ax.axhline(before, color="grey", linestyle="--", label=f"before registration ({before:.2f} mm)")
                ax.legend(fontsize=8)


def _plot_scaling(axes, scaling: Optional[Mapping[str, Any]]) -> None:
    """Log-log curves of time and peak RSS against the TRUS grid size."""
    from matplotlib.ticker import MaxNLocator, NullLocator

    panels = (("time_s", "time (s)", "(b) time vs grid size"), ("peak_rss_mib", "peak RSS (MiB)",
                                                                "(b) peak RAM vs grid size"))
    for ax, (key, label, title) in zip(axes, panels):
        ax.set_title(title, fontsize=9)
        if not scaling:
            ax.text(0.5, 0.5, "no scaling run", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        for name, entry in scaling.get("contenders", {}).items():
            runs = [run for run in entry.get("runs", []) if key in run]
            if runs:
                ax.plot([run["size"] for run in runs], [run[key] for run in runs], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        sizes = scaling.get("sizes", [])
        if sizes:
            ax.set_xticks(sizes, [f"{n}³" for n in sizes])
            ax.xaxis.set_minor_locator(NullLocator())
        values = [run[key] for entry in scaling.get("contenders", {}).values() for run in entry.get("runs", [])
                  if key in run and run[key] > 0]
        if values and max(values) < 10 * min(values):  # less than a decade: label plain ticks
            ticks = [t for t in MaxNLocator(5).tick_values(min(values), max(values)) if t > 0]
            ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
            ax.yaxis.set_minor_locator(NullLocator())
        ax.set_xlabel(f"TRUS grid (field of view {scaling.get('fov_mm', SCALING_FOV_MM):g} mm)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)


def write_bench(result: Mapping[str, Any], json_path: str | os.PathLike, png_path: str | os.PathLike | None = None,
                overwrite: bool = False, scaling: Optional[Mapping[str, Any]] = None) -> dict[str, Path]:
    """Write ``result`` (plus ``scaling``, from :func:`scaling_curve`, under the key ``scaling``) as JSON and,
    with ``png_path``, the plot; atomically, refusing existing outputs unless ``overwrite``."""
    if scaling is not None:
        result = {**result, "scaling": scaling}
    targets = {"json": Path(json_path)} | ({"png": Path(png_path)} if png_path is not None else {})
    for target in targets.values():
        if target.exists() and not overwrite:
            raise OutputExistsError(f"{target}: output exists (pass --overwrite to replace it)")
    from .io import atomic_output

    with atomic_output(targets["json"], overwrite) as tmp:
        tmp.write_text(json.dumps(_json_safe(result), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    if "png" in targets:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        figure = _figure(result)
        FigureCanvasAgg(figure)
        with atomic_output(targets["png"], overwrite) as tmp:
            figure.savefig(tmp, dpi=110, format="png")
    return targets


def _number(value: Optional[float], digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _cell(text: str, limit: int = 60) -> str:
    """One line of ``text`` fit for a Markdown table cell."""
    line = " ".join(str(text).split()).replace("|", "/")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _warm_cell(run: Mapping[str, Any]) -> str:
    """`` [warm s]`` of a run timed warm, else nothing."""
    return f" [{_number(run['warm_time_s'])}]" if "warm_time_s" in run else ""


def format_table(result: Mapping[str, Any]) -> str:
    """Markdown tables for the README: per contender (and, when present, the scaling curve)."""
    env = result.get("environment", {})
    reference = result.get("reference", REFERENCE)
    lines = [f"{len(result.get('cases', []))} cases; {env.get('cpu_affinity') or env.get('cpu_count')} CPU cores, "
             f"torch threads {env.get('torch_threads')}, device {env.get('device')}; "
             f"ratios = {reference} / contender (> 1: faster, smaller TRE); time: a fresh process per run; "
             f"warm: a second call in that process.", "",
             "| contender | time (s) | warm (s) | speed-up vs SimpleITK | TRE (mm) | TRE ratio | Dice | peak RSS (MiB) "
             "| cases |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    before_tre = _mean([case.get("tre_before_mm") for case in result.get("cases", [])])
    before_dice = _mean([case.get("dice_before") for case in result.get("cases", [])])
    if result.get("cases"):
        lines.append(f"| (before registration) | | | | {_number(before_tre)} | | {_number(before_dice)} | | "
                     f"{len(result['cases'])} |")
    for name, entry in result.get("contenders", {}).items():
        if "summary" not in entry:
            lines.append(f"| {name} | skipped: {_cell(entry.get('skipped', '?'))} | | | | | | | |")
            continue
        s = entry["summary"]
        failed = f" ({s['n_failed']} failed)" if s.get("n_failed") else ""
        warm = _number(s["warm_time_s"]) if "warm_time_s" in s else ""
        lines.append(f"| {name} | {_number(s['time_s'])} | {warm} | {_number(s.get('time_ratio_vs_simpleitk'))} | "
                     f"{_number(s['tre_mean_mm'])} | {_number(s.get('tre_ratio_vs_simpleitk'))} | "
                     f"{_number(s['dice'])} | {_number(s['peak_rss_mib'], 4)} | {s['n_cases']}{failed} |")
    scaling = result.get("scaling")
    if scaling:
        sizes = scaling.get("sizes", [])
        lines += ["", "| contender | " + " | ".join(f"{n}³: time (s) [warm] / peak RSS (MiB)" for n in sizes) + " |",
                  "|---|" + "---:|" * len(sizes)]
        for name, entry in scaling.get("contenders", {}).items():
            if "runs" not in entry:
                lines.append(f"| {name} | skipped: {_cell(entry.get('skipped', '?'))} |" + " |" * (len(sizes) - 1))
                continue
            by_size = {run["size"]: run for run in entry["runs"]}
            cells = []
            for n in sizes:
                run = by_size.get(n)
                cells.append("–" if run is None else f"error: {_cell(run['error'], 40)}" if "error" in run
                             else f"{_number(run['time_s'])}{_warm_cell(run)} / {_number(run['peak_rss_mib'], 4)}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
