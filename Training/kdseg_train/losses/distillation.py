"""Configurable combination of distillation terms, built from the ``distill:`` section of a run config.

    distill:
      teacher: runs/teacher
      pixel_kd: {weight: 0.5, temperature: 4.0}     # Hinton KL on logits
      attention_kd: {weight: 0.1}                    # SHSA head vs teacher head mean
      token_kd: {weight: 1.0}                        # MISTKD-style token MSE (learned projections)
      channel_kd: {weight: 3.0, tau: 1.0}            # CWD on logits
      pairwise_kd: {weight: 1.0, grid: [16, 16]}     # structured KD on the first decoder stage
      importance_kd: {weight: 0.9, p: 2.0}           # EMKD importance maps on the decoder stages
      region_affinity_kd: {weight: 0.9}              # EMKD region affinity (K organs) on the first decoder stage
      ranking_kd: {weight: 0.5, top_k: 16}           # token importance ranking (ListNet)

A term is active when its weight is > 0.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
from torch import nn

from .attention_kd import AttentionMapDistillation
from .channel_kd import ChannelWiseDistillation
from .emkd import ImportanceMapDistillation, RegionAffinityDistillation
from .pairwise_kd import PairwiseAffinityDistillation
from .pixel_kd import PixelKLDivergence
from .ranking_kd import TokenRankingDistillation
from .token_kd import TokenSequenceDistillation

__all__ = ["DISTILLATION_TERMS", "DistillationCriterion"]

DISTILLATION_TERMS = ("pixel_kd", "attention_kd", "token_kd", "channel_kd", "pairwise_kd", "importance_kd",
                      "region_affinity_kd", "ranking_kd")
_NEEDS_FEATURES = {"attention_kd", "token_kd", "pairwise_kd", "importance_kd", "region_affinity_kd", "ranking_kd"}


class DistillationCriterion(nn.Module):
    """Weighted sum of the configured terms; its parameters (projections) train with the student.

    Args:
        config: the ``distill`` mapping (unknown term names raise ValueError).
        student, teacher: the two networks (their configs size the projections).
        num_classes: classes of the label map (region affinity).
    """

    def __init__(self, config: Dict[str, Any], student: nn.Module, teacher: nn.Module, num_classes: int) -> None:
        super().__init__()
        unknown = set(config) - set(DISTILLATION_TERMS) - {"teacher"}
        if unknown:
            raise ValueError(f"unknown distillation term(s) {sorted(unknown)}; known: {', '.join(DISTILLATION_TERMS)}")
        s_cfg, t_cfg = student.config, teacher.config
        self.weights: Dict[str, float] = {}
        terms: Dict[str, nn.Module] = {}
        for name in DISTILLATION_TERMS:
            options = dict(config.get(name) or {})
            weight = float(options.pop("weight", 0.0))
            if weight <= 0:
                continue
            if name == "pixel_kd":
                term: nn.Module = PixelKLDivergence(float(options.get("temperature", 4.0)))
            elif name == "attention_kd":
                term = AttentionMapDistillation(s_cfg.depth, t_cfg.depth)
            elif name == "token_kd":
                term = TokenSequenceDistillation(s_cfg.hidden_size, t_cfg.hidden_size, s_cfg.depth, t_cfg.depth)
            elif name == "channel_kd":
                term = ChannelWiseDistillation(float(options.get("tau", 1.0)))
            elif name == "pairwise_kd":
                term = PairwiseAffinityDistillation(tuple(options.get("grid", (16, 16))))
            elif name == "importance_kd":
                term = ImportanceMapDistillation(float(options.get("p", 2.0)))
            elif name == "region_affinity_kd":
                term = RegionAffinityDistillation(num_classes)
            else:
                term = TokenRankingDistillation(int(options.get("top_k", 16)), float(options.get("temperature", 1.0)))
            terms[name] = term
            self.weights[name] = weight
        self.terms = nn.ModuleDict(terms)
        self.needs_features = bool(_NEEDS_FEATURES & set(terms))

    def forward(self, student, teacher, labels: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """``student``/``teacher``: TransUNetOutput (or logits when no term needs features)."""
        s_logits = student.logits if self.needs_features else student
        t_logits = teacher.logits if self.needs_features else teacher
        values: Dict[str, torch.Tensor] = {}
        for name, term in self.terms.items():
            if name == "pixel_kd":
                value = term(s_logits, t_logits)
            elif name == "channel_kd":
                value = term(s_logits, t_logits)
            elif name == "attention_kd":
                value = term(student.attention_mean, teacher.attention_mean, student.grid, teacher.grid)
            elif name == "token_kd":
                value = term(student.tokens, teacher.tokens, student.grid, teacher.grid)
            elif name == "pairwise_kd":
                value = term(student.decoder_features[0], teacher.decoder_features[0])
            elif name == "importance_kd":
                value = sum(term(s, t) for s, t in zip(student.decoder_features, teacher.decoder_features)) / len(
                    student.decoder_features)
            elif name == "region_affinity_kd":
                value = term(student.decoder_features[0], teacher.decoder_features[0], labels)
            else:
                value = term(student.attention_mean[-1], teacher.attention_mean[-1], student.grid, teacher.grid)
            values[name] = self.weights[name] * value
        total = sum(values.values()) if values else s_logits.new_zeros(())
        return total, values
