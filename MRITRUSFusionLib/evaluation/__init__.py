"""Dataset-level evaluation: registration, segmentation and detection of many cases at once, written as a
per-case CSV, a summary JSON and a report PNG.

    result = evaluate_registration_dataset("data/mrus", "runs/bspline", unit="vox")
    write_outputs(result, "runs/bspline/eval", overwrite=False)   # per_case.csv, summary.json, report.png, ...

The per-case metrics come from :mod:`MRITRUSFusionLib.metrics`; keys carry their unit (``*_mm``, ``*_vox``,
``*_ml``).
"""

from .detection import evaluate_detection_dataset
from .montage import CaseMontage, case_montage
from .registration import case_registration_metrics, evaluate_registration_dataset, summarize_registration
from .report import (
    write_detection_report_png,
    write_registration_report_png,
    write_report_png,
    write_segmentation_report_png,
)
from .result import EvaluationResult
from .segmentation import evaluate_segmentation_dataset
from .tables import write_case_csv, write_outputs, write_summary_json

__all__ = [
    "CaseMontage",
    "EvaluationResult",
    "case_montage",
    "case_registration_metrics",
    "evaluate_detection_dataset",
    "evaluate_registration_dataset",
    "evaluate_segmentation_dataset",
    "summarize_registration",
    "write_case_csv",
    "write_detection_report_png",
    "write_outputs",
    "write_registration_report_png",
    "write_report_png",
    "write_segmentation_report_png",
    "write_summary_json",
]
