"""Tumour and gland segmentation: networks, model registry and weights, inference and post-processing."""

from .inference import Segmentation, probability_to_label, segment, segment_trus, target_probability, tumour_probability
from .lesions import LesionCandidate, lesion_candidates, write_lesions
from .models import MODELS, LoadedModel, ModelSpec, default_weights_path, load_model, model_spec, resolve_device
from .postprocessing import DEFAULT_MIN_VOLUME_MM3, largest_component, remove_small_components

__all__ = [
    "DEFAULT_MIN_VOLUME_MM3", "MODELS", "LesionCandidate", "LoadedModel", "ModelSpec", "Segmentation",
    "default_weights_path", "largest_component", "lesion_candidates", "load_model", "model_spec",
    "probability_to_label", "remove_small_components", "resolve_device", "segment", "segment_trus",
    "target_probability", "tumour_probability", "write_lesions",
]
