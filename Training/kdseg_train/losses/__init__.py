"""Segmentation and knowledge-distillation losses."""

from .attention_kd import AttentionMapDistillation, layer_mapping
from .pixel_kd import PixelKLDivergence
from .segmentation import SegmentationLoss

__all__ = ["SegmentationLoss", "PixelKLDivergence", "AttentionMapDistillation", "layer_mapping"]
