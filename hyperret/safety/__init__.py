"""The safety layer: bounds (calibration), classification, traversals, explanations, evaluation."""

from .bounds import CLASSES, MODALITIES, Bounds, Threshold, calibrate
from .classify import Classification, classify, classify_radius

__all__ = ["Bounds", "Threshold", "calibrate", "Classification", "classify", "classify_radius",
           "CLASSES", "MODALITIES"]
