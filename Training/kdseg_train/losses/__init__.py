"""Segmentation and knowledge-distillation losses."""

from .attention_kd import AttentionMapDistillation, layer_mapping
from .channel_kd import ChannelWiseDistillation
from .distillation import DISTILLATION_TERMS, DistillationCriterion
from .emkd import ImportanceMapDistillation, RegionAffinityDistillation, importance_map
from .pairwise_kd import PairwiseAffinityDistillation, pairwise_affinity
from .pixel_kd import PixelKLDivergence
from .ranking_kd import TokenRankingDistillation, token_importance
from .segmentation import SegmentationLoss
from .token_kd import TokenSequenceDistillation

__all__ = ["SegmentationLoss", "PixelKLDivergence", "AttentionMapDistillation", "layer_mapping",
           "ChannelWiseDistillation", "PairwiseAffinityDistillation", "pairwise_affinity",
           "ImportanceMapDistillation", "RegionAffinityDistillation", "importance_map",
           "TokenSequenceDistillation", "TokenRankingDistillation", "token_importance",
           "DISTILLATION_TERMS", "DistillationCriterion"]
