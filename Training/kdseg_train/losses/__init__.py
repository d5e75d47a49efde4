"""Segmentation and knowledge-distillation losses.

:class:`SegmentationLoss` is TransUNet's 0.5 CE + 0.5 Dice with an ignore label;
:func:`build_distillation` combines the distillation terms of a ``distill:`` config
(registry :data:`DISTILLATION_TERMS`) into one :class:`DistillationCriterion` whose
parameters (learned projections and adapters) the trainer optimises with the student.
"""

from .attention_kd import AttentionMapDistillation, layer_mapping
from .channel_kd import ChannelWiseDistillation
from .contourlet import (ContourletDecomposition, ContourletDistillation, ContourletTextureBranch,
                         DirectionalFilterBank, LaplacianPyramid)
from .distillation import (DISTILLATION_TERMS, LOGIT_TERMS, CachedTeacherLogits, DistillationCriterion, FeatureDims,
                           build_distillation, select_feature)
from .emkd import ImportanceMapDistillation, RegionAffinityDistillation, importance_map
from .pairwise_kd import PairwiseAffinityDistillation, pairwise_affinity
from .pixel_kd import PixelKLDivergence
from .ranking_kd import TokenRankingDistillation, token_importance
from .sccf import SpaceChannelCascadeDistillation, spatial_attention
from .segmentation import SegmentationLoss
from .token_kd import TokenSequenceDistillation

__all__ = ["SegmentationLoss", "PixelKLDivergence", "AttentionMapDistillation", "layer_mapping",
           "ChannelWiseDistillation", "PairwiseAffinityDistillation", "pairwise_affinity",
           "ImportanceMapDistillation", "RegionAffinityDistillation", "importance_map",
           "TokenSequenceDistillation", "TokenRankingDistillation", "token_importance",
           "SpaceChannelCascadeDistillation", "spatial_attention", "LaplacianPyramid", "DirectionalFilterBank",
           "ContourletDecomposition", "ContourletTextureBranch", "ContourletDistillation",
           "DISTILLATION_TERMS", "LOGIT_TERMS", "CachedTeacherLogits", "DistillationCriterion", "FeatureDims", "build_distillation", "select_feature"]
