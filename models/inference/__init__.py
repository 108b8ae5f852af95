"""Whole-volume inference: Gaussian sliding window over both nets, entropy, uncertain regions."""

from models.inference.predictor import Prediction, Predictor, normalized_entropy
from models.inference.regions import extract_regions
from models.inference.sliding import (
    ImportanceMapCache,
    gaussian_importance_map,
    sliding_window_dual,
    window_starts,
)

__all__ = [
    "ImportanceMapCache",
    "Prediction",
    "Predictor",
    "extract_regions",
    "gaussian_importance_map",
    "normalized_entropy",
    "sliding_window_dual",
    "window_starts",
]
