"""TRUS tumour segmentation: networks, model registry and weights, inference and post-processing."""

from .inference import probability_to_label, segment_trus, tumour_probability
from .models import MODELS, LoadedModel, ModelSpec, default_weights_path, load_model, model_spec, resolve_device
from .postprocessing import DEFAULT_MIN_VOLUME_MM3, remove_small_components

__all__ = [
    "DEFAULT_MIN_VOLUME_MM3", "MODELS", "LoadedModel", "ModelSpec", "default_weights_path", "load_model",
    "model_spec", "probability_to_label", "remove_small_components", "resolve_device", "segment_trus",
    "tumour_probability",
]
