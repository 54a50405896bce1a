"""layermask: LIME, KernelSHAP and occlusion explanations for image CNNs with layer masking (Balasubramanian &
Feizi, ICCV 2023)."""

from layermask.errors import InvalidOptionError, UnsupportedLayerError
from layermask.explanation.lime import explain
from layermask.explanation.options import METHODS, AdaptiveSampling, ExplainOptions, OcclusionWindow
from layermask.explanation.plotting import plot
from layermask.explanation.result import ClassScore, Explanation, LabelExplanation
from layermask.masking import MASKING_STRATEGIES, Masker, get_masker
from layermask.models import DEFAULT_MODEL, LoadedModel, Preprocessing, list_models, load_model, register_model
from layermask.transform import LayerMaskedModel, layer_mask

__all__ = [
    "DEFAULT_MODEL",
    "MASKING_STRATEGIES",
    "METHODS",
    "AdaptiveSampling",
    "ClassScore",
    "ExplainOptions",
    "Explanation",
    "InvalidOptionError",
    "LabelExplanation",
    "LayerMaskedModel",
    "LoadedModel",
    "Masker",
    "OcclusionWindow",
    "Preprocessing",
    "UnsupportedLayerError",
    "explain",
    "get_masker",
    "layer_mask",
    "list_models",
    "load_model",
    "plot",
    "register_model",
]
__version__ = "0.1.0"
