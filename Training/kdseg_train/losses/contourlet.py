"""Contourlet decomposition module (CDM) and its texture distillation loss, after RSKD
(Knowledge-Based Systems 2024; only the abstract is public: a Contourlet Decomposition
Module extracts directional texture features that the student learns from the teacher).

The contourlet transform (Do & Vetterli, "The contourlet transform: an efficient
directional multiresolution image representation", IEEE TIP 2005) is a Laplacian pyramid
(Burt & Adelson 1983) whose band-pass images are split by a directional filter bank.
Here:

- Laplacian pyramid: 5x5 binomial low-pass (depthwise, edge-replicating), decimation by
  2; band-pass ``b_l = x_l - up(down(x_l))`` with the same filter (x4) for the
  expansion, so the pyramid reconstructs exactly and a constant map has no band-pass;
- directional filter bank: the original DFB is a tree of quincunx fan filters; we use
  its frequency-domain equivalent, ``D`` angular wedges of the frequency plane with
  raised-cosine edges whose squares sum to one (a tight frame, so the band-pass image is
  the exact sum of its re-filtered sub-bands) and which are symmetric under
  ``w -> -w`` (so every sub-band is real). It is applied with the FFT, which handles
  any map size and keeps the transform exactly invertible (:meth:`reconstruct`).

What the abstract leaves open is our design: :class:`ContourletTextureBranch` is the
module a student attaches to a feature map (directional sub-band magnitudes, resized,
fused by a 1x1 conv, added residually; its last norm starts at zero so attaching it
does not change a trained network), and :class:`ContourletDistillation` compares the
normalised directional energy maps ``mean_c |sub_{l,d}|^2`` of student and teacher
feature maps, which needs no channel matching.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from ..errors import UsageError

__all__ = ["LaplacianPyramid", "DirectionalFilterBank", "ContourletDecomposition", "ContourletCoefficients",
           "ContourletTextureBranch", "ContourletDistillation", "directional_energy"]

_BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)


def _binomial_kernel() -> torch.Tensor:
    k = torch.tensor(_BINOMIAL)
    k = torch.outer(k, k)
    return k / k.sum()


class LaplacianPyramid(nn.Module):
    """Laplacian pyramid with a 5x5 binomial filter.

    Args:
        levels: number of band-pass levels.

    ``forward(x (B, C, H, W))`` returns (band-pass list, finest first, and the low-pass residual).
    """

    def __init__(self, levels: int = 2) -> None:
        super().__init__()
        if levels < 1:
            raise UsageError(f"levels must be >= 1, got {levels}")
        self.levels = int(levels)
        self.register_buffer("kernel", _binomial_kernel()[None, None], persistent=False)

    def _filter(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        c = x.shape[1]
        weight = (self.kernel * gain).to(x.dtype).expand(c, 1, 5, 5)
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), weight, groups=c)

    def down(self, x: torch.Tensor) -> torch.Tensor:
        return self._filter(x)[..., ::2, ::2]

    def up(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """Zero-insertion and the same filter (gain 4); the low-pass map is edge-padded first so a
        constant map expands to the same constant, without dark borders in the band-pass."""
        b, c, h, w = x.shape
        padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
        expanded = x.new_zeros(b, c, 2 * (h + 2), 2 * (w + 2))
        expanded[..., ::2, ::2] = padded
        weight = (self.kernel * 4.0).to(x.dtype).expand(c, 1, 5, 5)
        out = F.conv2d(expanded, weight, padding=2, groups=c)
        return out[..., 2: 2 + size[0], 2: 2 + size[1]]

    def forward(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        bands = []
        current = x
        for _ in range(self.levels):
            if min(current.shape[-2:]) < 2:
                raise UsageError(f"map {tuple(x.shape[-2:])} is too small for {self.levels} pyramid levels")
            low = self.down(current)
            bands.append(current - self.up(low, current.shape[-2:]))
            current = low
        return bands, current

    def reconstruct(self, bands: Sequence[torch.Tensor], low: torch.Tensor) -> torch.Tensor:
        current = low
        for band in reversed(bands):
            current = band + self.up(current, band.shape[-2:])
        return current


def _wedge_masks(height: int, width: int, directions: int, device: torch.device) -> torch.Tensor:
    """(D, H, W) real masks over the FFT grid: squares sum to 1, symmetric under w -> -w."""
    fy = torch.fft.fftfreq(height, device=device, dtype=torch.float64)[:, None].expand(height, width)
    fx = torch.fft.fftfreq(width, device=device, dtype=torch.float64)[None, :].expand(height, width)
    theta = torch.remainder(torch.atan2(fy, fx), math.pi)  # orientation in [0, pi)
    step = math.pi / directions
    bumps = []
    for d in range(directions):
        delta = torch.remainder(theta - (d + 0.5) * step + math.pi / 2, math.pi) - math.pi / 2
        # Raised cosine of half-width `step`: neighbours overlap so that the bumps sum to 1.
        bump = torch.where(delta.abs() < step, torch.cos(delta * (math.pi / 2) / step) ** 2, torch.zeros_like(delta))
        bumps.append(bump)
    b = torch.stack(bumps)
    # Symmetrise (index -k = flip then roll by one): keeps the sum at 1, makes every sub-band real.
    mirrored = torch.roll(torch.flip(b, dims=(1, 2)), shifts=(1, 1), dims=(1, 2))
    b = 0.5 * (b + mirrored)
    b = b / b.sum(0, keepdim=True)
    return b.sqrt().to(torch.float32)


class DirectionalFilterBank(nn.Module):
    """Split a band-pass map into ``directions`` orientation sub-bands (frequency-domain wedges).

    ``forward(x (B, C, H, W))`` -> (B, C, D, H, W) real sub-bands whose re-filtered sum is ``x``.
    """

    def __init__(self, directions: int = 8) -> None:
        super().__init__()
        if directions < 2:
            raise UsageError(f"directions must be >= 2, got {directions}")
        self.directions = int(directions)
        self._cache: dict = {}

    def masks(self, size: Tuple[int, int], device: torch.device) -> torch.Tensor:
        key = (int(size[0]), int(size[1]), str(device))
        if key not in self._cache:
            self._cache[key] = _wedge_masks(key[0], key[1], self.directions, device)
        return self._cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        masks = self.masks(x.shape[-2:], x.device)
        spectrum = torch.fft.fft2(x.float())[:, :, None]  # (B, C, 1, H, W)
        return torch.fft.ifft2(spectrum * masks).real.to(x.dtype)

    def reconstruct(self, subbands: torch.Tensor) -> torch.Tensor:
        masks = self.masks(subbands.shape[-2:], subbands.device)
        return torch.fft.ifft2(torch.fft.fft2(subbands.float()) * masks).real.sum(2).to(subbands.dtype)


@dataclass
class ContourletCoefficients:
    """Directional sub-bands per level (finest first, each (B, C, D_l, H_l, W_l)) and the low-pass residual."""

    subbands: List[torch.Tensor]
    lowpass: torch.Tensor


class ContourletDecomposition(nn.Module):
    """Contourlet transform: Laplacian pyramid + directional filter bank on every band-pass level.

    Args:
        levels: pyramid levels.
        directions: directions per level (an int, or one per level, finest first; the
            contourlet usually uses more directions at finer levels).
    """

    def __init__(self, levels: int = 2, directions: Union[int, Sequence[int]] = 8) -> None:
        super().__init__()
        dirs = [int(directions)] * levels if isinstance(directions, int) else [int(d) for d in directions]
        if len(dirs) != levels:
            raise UsageError(f"give one direction count per level ({levels}), got {dirs}")
        self.pyramid = LaplacianPyramid(levels)
        self.banks = nn.ModuleList(DirectionalFilterBank(d) for d in dirs)

    @property
    def directions(self) -> List[int]:
        return [bank.directions for bank in self.banks]

    def forward(self, x: torch.Tensor) -> ContourletCoefficients:
        bands, low = self.pyramid(x)
        return ContourletCoefficients([bank(band) for bank, band in zip(self.banks, bands)], low)

    def reconstruct(self, coefficients: ContourletCoefficients) -> torch.Tensor:
        bands = [bank.reconstruct(sub) for bank, sub in zip(self.banks, coefficients.subbands)]
        return self.pyramid.reconstruct(bands, coefficients.lowpass)


class ContourletTextureBranch(nn.Module):
    """Directional texture features a student attaches to a feature map: ``y = x + branch(x)``.

    Sub-band magnitudes of every level are resized to the map's size, concatenated and
    fused by a 1x1 conv + BatchNorm + ReLU; the BatchNorm weight starts at zero, so the
    branch adds nothing until it has learned something.

    Args:
        channels: channels of the map it attaches to.
        levels, directions: of the :class:`ContourletDecomposition`.
        reduce: channels kept per sub-band after a 1x1 squeeze (limits the fused width).

    Shapes:
        x (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, levels: int = 2, directions: Union[int, Sequence[int]] = 8,
                 reduce: Optional[int] = None) -> None:
        super().__init__()
        self.decomposition = ContourletDecomposition(levels, directions)
        squeeze = int(reduce or max(1, channels // 8))
        self.squeeze = nn.Conv2d(channels, squeeze, kernel_size=1, bias=False)
        fused_in = squeeze * sum(self.decomposition.directions)
        self.fuse = nn.Sequential(nn.Conv2d(fused_in, channels, kernel_size=1, bias=False), nn.BatchNorm2d(channels),
                                  nn.ReLU(inplace=True))
        nn.init.zeros_(self.fuse[1].weight)

    def texture(self, x: torch.Tensor) -> torch.Tensor:
        """The fused texture features (before the residual sum)."""
        coefficients = self.decomposition(self.squeeze(x))
        maps = []
        for sub in coefficients.subbands:
            b, c, d, h, w = sub.shape
            magnitude = sub.abs().reshape(b, c * d, h, w)
            if (h, w) != tuple(x.shape[-2:]):
                magnitude = F.interpolate(magnitude, size=x.shape[-2:], mode="bilinear", align_corners=False)
            maps.append(magnitude)
        return self.fuse(torch.cat(maps, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.texture(x)


def directional_energy(coefficients: ContourletCoefficients) -> List[torch.Tensor]:
    """Per level, ``mean_c |sub|^2`` L2-normalised per sample: list of (B, D_l * H_l * W_l)."""
    return [F.normalize(sub.pow(2).mean(dim=1).flatten(1), dim=1) for sub in coefficients.subbands]


class ContourletDistillation(nn.Module):
    """Texture distillation: squared difference of normalised directional energy maps, per level.

    ``loss = mean_l mean_b sum (E_s^l - E_t^l)^2`` with ``E^l`` from :func:`directional_energy`;
    student maps are resized to the teacher's resolution first. Channel counts may differ.

    Args:
        levels, directions: of the decomposition.

    Shapes:
        student (B, Cs, H, W), teacher (B, Ct, H', W'). Returns a scalar in [0, 4].
    """

    def __init__(self, levels: int = 2, directions: Union[int, Sequence[int]] = 8) -> None:
        super().__init__()
        self.decomposition = ContourletDecomposition(levels, directions)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        teacher = teacher.detach()
        if student.shape[-2:] != teacher.shape[-2:]:
            student = F.interpolate(student, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
        e_s = directional_energy(self.decomposition(student))
        e_t = directional_energy(self.decomposition(teacher))
        return sum(((s - t) ** 2).sum(1).mean() for s, t in zip(e_s, e_t)) / len(e_s)
