"""EMKD importance-map and region-affinity distillation (Qin et al., "Efficient Medical Image
Segmentation Based on Knowledge Distillation", IEEE TMI 2021, arXiv 2108.09987; EagleMIT/EMKD).

Importance maps follow the paper and its code (attention transfer of Zagoruyko &
Komodakis: ``A(F) = normalize(vec(mean_c F^p))``, p = 4, summed squared difference,
student map resized to the teacher's size). Region affinity in the paper and code is
binary: one foreground and one background prototype per sample, their cosine compared.
Our generalisation to K organs: a prototype per class present in the sample's ground
truth, the (K+1) x (K+1) cosine matrix between them, and the mean squared difference
over pairs of distinct present classes (the binary case reduces to the paper's loss).
Voxels with the ignore label belong to no prototype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.label_maps import IGNORE_INDEX
from ..errors import UsageError

__all__ = ["importance_map", "ImportanceMapDistillation", "RegionAffinityDistillation"]


def importance_map(features: torch.Tensor, p: float = 4.0) -> torch.Tensor:
    """L2-normalised ``vec(mean_c |F|^p)``: (B, H*W) (EMKD: p = 4; |F| so odd p stays a magnitude)."""
    return F.normalize(features.abs().pow(p).mean(dim=1).flatten(1), dim=1)


class ImportanceMapDistillation(nn.Module):
    """``sum (A_s - A_t)^2`` per sample, batch mean; the student map is resized to the teacher's size.

    Args:
        p: exponent of the activation map (EMKD's official code: 4).
    """

    def __init__(self, p: float = 4.0) -> None:
        super().__init__()
        if p <= 0:
            raise UsageError(f"p must be positive, got {p}")
        self.p = p

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape[-2:] != teacher.shape[-2:]:
            student = F.interpolate(student, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
        diff = importance_map(student, self.p) - importance_map(teacher.detach(), self.p)
        return diff.pow(2).sum(1).mean()


def _prototype_affinity(features: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Cosine matrix between class prototypes and the mask of classes present, per sample."""
    lab = F.interpolate(labels[:, None].float(), size=features.shape[-2:], mode="nearest")[:, 0].long()
    valid = lab != IGNORE_INDEX
    # In the features' dtype (float64, float32 or half), so the einsum below never mixes dtypes.
    onehot = F.one_hot(torch.where(valid, lab, torch.zeros_like(lab)), num_classes).permute(0, 3, 1, 2)
    onehot = onehot.to(features.dtype) * valid[:, None].to(features.dtype)
    counts = onehot.sum(dim=(2, 3))  # (B, K)
    protos = torch.einsum("bchw,bkhw->bkc", features, onehot) / counts.clamp_min(1)[..., None]
    protos = F.normalize(protos, dim=-1)
    return protos @ protos.transpose(1, 2), counts > 0


class RegionAffinityDistillation(nn.Module):
    """Mean squared difference of class-prototype cosine affinities (student vs teacher).

    Shapes:
        student (B, Cs, H, W), teacher (B, Ct, H', W'), labels (B, H0, W0) int64.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # At least float32 inside (half cannot hold the normalisation's eps), the input's dtype out.
        work = torch.promote_types(student.dtype, torch.float32)
        return self._loss(student.to(work), teacher.detach().to(work), labels).to(student.dtype)

    def _loss(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        c_s, present = _prototype_affinity(student, labels, self.num_classes)
        c_t, _ = _prototype_affinity(teacher, labels, self.num_classes)
        pair = (present[:, :, None] & present[:, None, :]).to(c_s.dtype)
        pair = pair * (1 - torch.eye(self.num_classes, device=pair.device, dtype=c_s.dtype))
        if pair.sum() == 0:
            return student.sum() * 0.0
        return ((c_s - c_t) ** 2 * pair).sum() / pair.sum()
