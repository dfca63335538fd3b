"""Evaluation report figures (PNG): registration box plots, landmark scatter and case montages; segmentation
and detection overviews. Drawn on Matplotlib's Agg canvas directly (no ``pyplot``, no GUI, no global backend
switch, as :mod:`MRITRUSFusionLib.fusion`), so they are safe headless and inside 3D Slicer; written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ..fusion import draw_outline, frame_view
from ..io.atomic import atomic_output
from .montage import CaseMontage
from .result import phased

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .result import EvaluationResult

PHASE_COLOURS = {"before": "tab:orange", "after": "tab:blue"}
FIXED_COLOUR, MOVING_COLOUR = "yellow", "red"
_COLUMNS = 4


def _new_figure(width_in: float, height_in: float, dpi: int) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | os.PathLike, overwrite: bool, dpi: int) -> Path:
    with atomic_output(path, overwrite) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    return Path(path)


def _finite(values: Sequence[Any]) -> np.ndarray:
    array = np.asarray([v for v in values if v is not None and v != ""], dtype=float)
    return array[np.isfinite(array)]


def _jitter(n: int, width: float = 0.12) -> np.ndarray:
    """Horizontal offsets spreading ``n`` points over [-width, width] (0 for a single point)."""
    return np.linspace(-width, width, n) if n > 1 else np.zeros(n)


def _no_data(ax: Axes, title: str, text: str = "no values") -> None:
    ax.set_title(title, fontsize=10)
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _paired_box(ax: Axes, rows: Sequence[Mapping[str, Any]], key: str, title: str, ylabel: str) -> None:
    """Box plots of ``key`` before and after over cases, each case's pair of values joined by a grey line."""
    pairs = np.array([[row.get(phased(key, "before"), math.nan), row.get(phased(key, "after"), math.nan)]
                      for row in rows], dtype=float)
    columns = [pairs[:, 0][np.isfinite(pairs[:, 0])], pairs[:, 1][np.isfinite(pairs[:, 1])]]
    if not any(len(c) for c in columns):
        _no_data(ax, title)
        return
    for pair in pairs:
        ax.plot([1, 2], pair, color="0.75", linewidth=0.6, zorder=1)
    for position, (phase, values) in enumerate(zip(("before", "after"), columns), start=1):
        if len(values):
            box = ax.boxplot(values, positions=[position], widths=0.5, patch_artist=True, showfliers=False)
            box["boxes"][0].set(facecolor=PHASE_COLOURS[phase], alpha=0.35)
            box["medians"][0].set(color="black")
            ax.scatter(np.full(len(values), position) + _jitter(len(values)), values, s=9,
                       color=PHASE_COLOURS[phase], zorder=3)
    ax.set_xticks([1, 2], ["before", "after"])
    ax.set_xlim(0.5, 2.5)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def _landmark_scatter(ax: Axes, landmark_rows: Sequence[Mapping[str, Any]]) -> None:
    """Per-landmark TRE after against before (mm), one colour per case, with the line y = x."""
    title = "per-landmark TRE (mm)"
    points = np.array([[r.get("tre_before_mm", math.nan), r.get("tre_after_mm", math.nan)] for r in landmark_rows],
                      dtype=float).reshape(-1, 2)
    points_ok = np.all(np.isfinite(points), axis=1)
    if not points_ok.any():
        _no_data(ax, title, "no landmarks")
        return
    cases = [r["case"] for r in landmark_rows]
    index = {case: i for i, case in enumerate(dict.fromkeys(cases))}
    ax.scatter(points[points_ok, 0], points[points_ok, 1], s=12, cmap="tab20", vmin=0, vmax=max(len(index) - 1, 1),
               c=[index[c] for c, ok in zip(cases, points_ok) if ok])
    top = float(points[points_ok].max()) * 1.05 or 1.0
    ax.plot([0, top], [0, top], "k--", linewidth=0.8, label="after = before")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_aspect("equal")
    ax.set_xlabel("TRE before (mm)", fontsize=9)
    ax.set_ylabel("TRE after (mm)", fontsize=9)
    ax.set_title(f"{title}\n{points_ok.sum()} landmarks, {len(index)} cases", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)


def _montage_panel(ax: Axes, montage: CaseMontage, phase: str, legend: bool) -> None:
    """One axial TRUS slice with the fixed gland (solid) and the warped moving gland (dashed) outlines."""
    from matplotlib.lines import Line2D

    ax.imshow(montage.trus, cmap="gray", vmin=0.0, vmax=1.0, origin="lower", extent=montage.extent,
              aspect="equal", interpolation="nearest")
    moving = montage.moving_gland_before if phase == "before" else montage.moving_gland_after
    for mask, colour, style in ((montage.fixed_gland, FIXED_COLOUR, "-"), (moving, MOVING_COLOUR, "--")):
        draw_outline(ax, montage, mask, colour, style)
    frame_view(ax, montage, f"{montage.case}, {phase} (axial slice {montage.slice_index})")
    if legend:
        ax.legend(handles=[Line2D([], [], color=FIXED_COLOUR, label="TRUS gland"),
                           Line2D([], [], color=MOVING_COLOUR, linestyle="--", label="MRI gland warped")],
                  fontsize=7, loc="lower right", framealpha=0.6)


def write_registration_report_png(
    path: str | os.PathLike,
    per_case_rows: Sequence[Mapping[str, Any]],
    per_landmark_rows: Sequence[Mapping[str, Any]],
    montage_cases: Sequence[CaseMontage] | None = None,
    overwrite: bool = True,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Write the registration report PNG; return ``path``.

    Top row: box plots over cases of gland Dice, HD95 (mm) and TRE (per-case RMS over landmarks, mm) before
    and after registration (each case's two values joined by a grey line), and the per-landmark TRE after
    against before (mm; below the dashed line y = x the registration helped). Below, for each of
    ``montage_cases`` (:func:`~.montage.case_montage`), the axial TRUS slice through the gland centroid with
    the TRUS gland outline (solid yellow) and the MRI gland warped onto the TRUS grid (dashed red) before and
    after. Rows use the column names of :func:`~.registration.evaluate_registration_dataset`.
    """
    montage_cases = list(montage_cases or [])
    montage_rows = math.ceil(2 * len(montage_cases) / _COLUMNS)
    figure = _new_figure(4.0 * _COLUMNS, 4.2 + 3.8 * montage_rows, dpi)
    grid = figure.add_gridspec(1 + montage_rows, _COLUMNS, height_ratios=[1.1] + [1.0] * montage_rows)
    _paired_box(figure.add_subplot(grid[0, 0]), per_case_rows, "dice", "gland Dice", "Dice")
    _paired_box(figure.add_subplot(grid[0, 1]), per_case_rows, "hd95_mm", "gland HD95 (mm)", "mm")
    _paired_box(figure.add_subplot(grid[0, 2]), per_case_rows, "tre_rms_mm", "TRE per case, RMS (mm)", "mm")
    _landmark_scatter(figure.add_subplot(grid[0, 3]), per_landmark_rows)
    panels = [(montage, phase) for montage in montage_cases for phase in ("before", "after")]
    for i, (montage, phase) in enumerate(panels):
        _montage_panel(figure.add_subplot(grid[1 + i // _COLUMNS, i % _COLUMNS]), montage, phase, legend=i == 0)
    figure.suptitle(title or f"Registration evaluation, {len(per_case_rows)} cases")
    return _save(figure, path, overwrite, dpi)


_SEGMENTATION_PLOTS = (("dice", "Dice"), ("iou", "IoU"), ("sensitivity", "sensitivity"),
                       ("precision", "precision"), ("hd95_mm", "HD95 (mm)"), ("asd_mm", "ASD (mm)"),
                       ("volume_difference_ml", "volume difference pred - ref (mL)"))


def write_segmentation_report_png(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]],
                                  overwrite: bool = True, title: str | None = None, dpi: int = 100) -> Path:
    """Write a PNG of box plots over cases of each segmentation metric (one box per structure); return ``path``."""
    structures = list(dict.fromkeys(row["structure"] for row in rows))
    figure = _new_figure(4.0 * _COLUMNS, 8.0, dpi)
    grid = figure.add_gridspec(2, _COLUMNS)
    for i, (key, label) in enumerate(_SEGMENTATION_PLOTS):
        ax = figure.add_subplot(grid[i // _COLUMNS, i % _COLUMNS])
        columns = [_finite([row.get(key) for row in rows if row["structure"] == s]) for s in structures]
        if not any(len(c) for c in columns):
            _no_data(ax, label)
            continue
        for position, values in enumerate(columns, start=1):
            if len(values):
                ax.boxplot(values, positions=[position], widths=0.5, showfliers=False)
                ax.scatter(np.full(len(values), position) + _jitter(len(values)), values, s=9,
                           zorder=3)
        ax.set_xticks(range(1, len(structures) + 1), structures, fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    figure.suptitle(title or f"Segmentation evaluation, {len(dict.fromkeys(r['case'] for r in rows))} cases")
    return _save(figure, path, overwrite, dpi)


def _summary_text(summary: Mapping[str, Any]) -> str:
    picai = summary.get("picai", {})
    lines = [f"PI-CAI score {picai.get('picai_score', math.nan):.3f}",
             f"AUROC {picai.get('auroc', math.nan):.3f}   AP {picai.get('ap', math.nan):.3f}",
             f"{picai.get('num_cases', 0)} cases, {picai.get('num_lesions', 0)} lesions"]
    if "patient_level" in summary:
        patient = summary["patient_level"]
        lines.append(f"patient level (threshold {summary['threshold']}): "
                     f"sensitivity {patient['sensitivity']:.3f}, specificity {patient['specificity']:.3f}, "
                     f"AUC {patient['auc']:.3f}")
    return "\n".join(lines)


def write_detection_report_png(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]],
                               summary: Mapping[str, Any], overwrite: bool = True, title: str | None = None,
                               dpi: int = 100) -> Path:
    """Write a PNG with the per-case maximum confidence of cases with and without reference lesions (the
    PI-CAI case-level ranking) and, with glands, the pooled seed-000 lesion-level counts; return ``path``."""
    figure = _new_figure(12.0, 5.0, dpi)
    grid = figure.add_gridspec(1, 2)
    ax = figure.add_subplot(grid[0, 0])
    for position, positive in enumerate((0, 1), start=1):
        values = _finite([row["max_confidence"] for row in rows if row["reference_positive"] == positive])
        if len(values):
            ax.boxplot(values, positions=[position], widths=0.5, showfliers=False)
            ax.scatter(np.full(len(values), position) + _jitter(len(values)), values, s=12, zorder=3)
    ax.set_xticks([1, 2], ["no lesion", "lesion"])
    ax.set_xlim(0.5, 2.5)
    ax.set_ylabel("maximum detection confidence")
    ax.set_title("case-level confidence by reference", fontsize=10)
    ax.text(0.02, 0.98, _summary_text(summary), transform=ax.transAxes, va="top", fontsize=8,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})
    ax.grid(axis="y", alpha=0.3)
    ax = figure.add_subplot(grid[0, 1])
    if "lesion_level" in summary:
        counts = summary["lesion_level"]
        names = ["tp", "fn", "fp", "tn"]
        ax.bar(names, [counts[n] for n in names], color=["tab:green", "tab:red", "tab:orange", "tab:blue"])
        ax.set_title(f"seed-000 lesion level (TP/FN lesions, FP/TN sextants), threshold {summary['threshold']}",
                     fontsize=10)
        ax.set_ylabel("count")
    else:
        _no_data(ax, "seed-000 lesion level", "no gland masks given:\nPI-CAI metrics only")
    figure.suptitle(title or f"Detection evaluation, {len(rows)} cases")
    return _save(figure, path, overwrite, dpi)


def write_report_png(result: EvaluationResult, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Write the report PNG of ``result`` with the writer of its kind; return ``path``."""
    if result.kind == "registration":
        return write_registration_report_png(path, result.rows, result.landmark_rows, result.montages, overwrite)
    if result.kind == "segmentation":
        return write_segmentation_report_png(path, result.rows, overwrite)
    if result.kind == "detection":
        return write_detection_report_png(path, result.rows, result.summary, overwrite)
    raise InputError(f"evaluation kind: expected registration, segmentation or detection, got {result.kind!r}")
