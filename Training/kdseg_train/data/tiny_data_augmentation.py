"""Augmentation for very small CT training sets, applied identically to image, label and teacher logits.

One spatial transform per sample, built from MONAI grid utilities and resampled with
MONAI's :class:`~monai.transforms.Resample`: a zoom (default +-25 %), a rotation, a small
translation and, with some probability, a smooth elastic displacement, composed into one
sampling grid so each array is interpolated once. The grid is in pixel units centred on
the array's centre (MONAI's ``norm_coords`` convention), so the same grid applied to the
training canvas (image, label) and to the model-grid teacher logits cached for the
un-augmented slice (see :mod:`kdseg_train.logit_cache`) samples the same anatomy: the
"fast knowledge distillation" of Shen & Xing 2022 (transform the stored soft targets
with the image instead of running the teacher on every augmented image). Logit pixels
the cached map does not cover are marked invalid and left out of the KD loss.

No left-right flip and no rot90: left and right kidney differ only by side.

Intensity (image only), each with its own probability, through MONAI's random intensity
transforms sharing this sample's random state: offset and scale of the windowed value
(an HU offset/scale; values are re-clipped to the window, which differs from shifting
raw HU only for voxels within the offset of the window edges), gamma, Gaussian noise and
Gaussian blur.

Reproducibility: :meth:`TinyDataAugmentation.reseed` seeds the state from ``(seed, key,
index)``; a sample's augmentation depends on nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import (RandAdjustContrast, RandGaussianNoise, RandGaussianSmooth, Randomizable, RandScaleIntensity,
                              RandShiftIntensity, Resample)
from monai.transforms.utils import create_grid, create_rotate, create_scale, create_translate

from ..errors import UsageError
from .augmentation import sample_seed

__all__ = ["TinyDataAugmentation", "AugmentedSample"]


@dataclass
class AugmentedSample:
    """One augmented training sample.

    Attributes:
        image: (1, S, S) float32 in [0, 1].
        label: (S, S) int64.
        logits: (K, S, S) float32 teacher logits moved with the image, or None.
        logits_valid: (S, S) bool, where ``logits`` come from the cached map, or None.
    """

    image: torch.Tensor
    label: torch.Tensor
    logits: Optional[torch.Tensor] = None
    logits_valid: Optional[torch.Tensor] = None


class TinyDataAugmentation(Randomizable):
    """Random zoom, rotation, translation, elastic and intensity changes; output size S x S.

    Args:
        img_size: output size S.
        augment: False: only the centre crop of the canvas (what the model sees at inference).
        zoom: (min, max) zoom factor (> 1 enlarges anatomy).
        max_degrees: rotation drawn uniformly in [-max_degrees, max_degrees].
        max_translate_px: translation drawn uniformly in [-t, t] output pixels per axis.
        elastic_prob: probability of the elastic displacement.
        elastic_px: standard deviation of the elastic displacement at its control points (pixels).
        elastic_points: control points per axis of the elastic displacement.
        shift_prob, max_shift: window-value offset (0.05 = 20 HU in a 400 HU window).
        scale_prob, max_scale: window-value scale factor in [1 - s, 1 + s].
        gamma_prob, gamma: gamma range.
        noise_prob, noise_std: Gaussian noise (window units).
        blur_prob, blur_sigma: Gaussian blur sigma range (pixels).
        seed: base seed.
    """

    def __init__(self, img_size: int, augment: bool = True, zoom: Tuple[float, float] = (0.75, 1.25),
                 max_degrees: float = 15.0, max_translate_px: float = 8.0, elastic_prob: float = 0.3,
                 elastic_px: float = 2.0, elastic_points: int = 6, shift_prob: float = 0.5,
                 max_shift: float = 0.05, scale_prob: float = 0.5, max_scale: float = 0.1,
                 gamma_prob: float = 0.3, gamma: Tuple[float, float] = (0.7, 1.5), noise_prob: float = 0.3,
                 noise_std: float = 0.03, blur_prob: float = 0.2, blur_sigma: Tuple[float, float] = (0.3, 1.0),
                 seed: int = 1234) -> None:
        if int(img_size) < 1:
            raise UsageError(f"img_size must be positive, got {img_size}")
        if not 0 < zoom[0] <= zoom[1]:
            raise UsageError(f"zoom must be (min, max) with 0 < min <= max, got {zoom}")
        for name, p in (("elastic_prob", elastic_prob), ("shift_prob", shift_prob), ("scale_prob", scale_prob),
                        ("gamma_prob", gamma_prob), ("noise_prob", noise_prob), ("blur_prob", blur_prob)):
            if not 0.0 <= p <= 1.0:
                raise UsageError(f"{name} must be in [0, 1], got {p}")
        if elastic_points < 2:
            raise UsageError(f"elastic_points must be >= 2, got {elastic_points}")
        self.img_size, self.augment, self.seed = int(img_size), bool(augment), int(seed)
        self.zoom, self.max_degrees, self.max_translate_px = (float(zoom[0]), float(zoom[1])), float(max_degrees), \
            float(max_translate_px)
        self.elastic_prob, self.elastic_px, self.elastic_points = float(elastic_prob), float(elastic_px), \
            int(elastic_points)
        self.intensity = [
            RandShiftIntensity(offsets=max_shift, prob=shift_prob),
            RandScaleIntensity(factors=max_scale, prob=scale_prob),
            RandAdjustContrast(prob=gamma_prob, gamma=gamma),
            RandGaussianNoise(prob=noise_prob, mean=0.0, std=noise_std),
            RandGaussianSmooth(sigma_x=blur_sigma, sigma_y=blur_sigma, prob=blur_prob),
        ]
        self.resampler = Resample(norm_coords=True)
        self._params = {"zoom": 1.0, "angle_rad": 0.0, "translate_px": (0.0, 0.0), "elastic": False}
        self._displacement: Optional[torch.Tensor] = None
        self.set_random_state(seed=self.seed)

    def reseed(self, key: int, index: int) -> "TinyDataAugmentation":
        """Seed the random state for sample ``index`` drawn under ``key`` (epoch or step position)."""
        self.set_random_state(seed=sample_seed(self.seed, key, index))
        for transform in self.intensity:
            transform.set_random_state(state=self.R)
        return self

    def randomize(self, data: object = None) -> None:
        """Draw the spatial parameters from ``self.R``."""
        self._displacement = None
        if not self.augment:
            self._params = {"zoom": 1.0, "angle_rad": 0.0, "translate_px": (0.0, 0.0), "elastic": False}
            return
        zoom = float(np.exp(self.R.uniform(np.log(self.zoom[0]), np.log(self.zoom[1]))))
        angle = float(np.deg2rad(self.R.uniform(-self.max_degrees, self.max_degrees)))
        shift = (float(self.R.uniform(-self.max_translate_px, self.max_translate_px)),
                 float(self.R.uniform(-self.max_translate_px, self.max_translate_px)))
        elastic = bool(self.R.random_sample() < self.elastic_prob)
        if elastic:
            coarse = self.R.normal(0.0, self.elastic_px, size=(1, 2, self.elastic_points, self.elastic_points))
            self._displacement = F.interpolate(torch.as_tensor(coarse, dtype=torch.float32),
                                               size=(self.img_size, self.img_size), mode="bicubic",
                                               align_corners=True)[0]
        self._params = {"zoom": zoom, "angle_rad": angle, "translate_px": shift, "elastic": elastic}

    @property
    def last_parameters(self) -> dict:
        """What the last call applied (for logging and tests)."""
        return dict(self._params)

    def sampling_grid(self) -> torch.Tensor:
        """(3, S, S) homogeneous sampling positions, in pixels relative to the source's centre."""
        s = self.img_size
        grid = torch.as_tensor(create_grid((s, s), backend="torch"), dtype=torch.float32)
        if self._displacement is not None:
            grid = grid.clone()
            grid[:2] += self._displacement
        p = self._params
        # Output position -> source position: undo the zoom, rotate, shift (all about the centre).
        matrix = (create_translate(2, p["translate_px"], backend="numpy")
                  @ create_rotate(2, p["angle_rad"], backend="numpy")
                  @ create_scale(2, (1.0 / p["zoom"], 1.0 / p["zoom"]), backend="numpy"))
        if not np.allclose(matrix, np.eye(3)):
            grid = torch.einsum("ij,jhw->ihw", torch.as_tensor(matrix, dtype=torch.float32), grid)
        return grid

    def __call__(self, canvas: np.ndarray, canvas_label: np.ndarray, logits: Optional[np.ndarray] = None
                 ) -> AugmentedSample:
        """Augment one slice.

        Args:
            canvas: (C, C) windowed image on the model's pixel grid, centred (C >= S).
            canvas_label: (C, C) labels on the same canvas.
            logits: (K, S, S) teacher logits of the un-augmented S x S centre, or None.
        """
        if canvas.ndim != 2 or canvas.shape != canvas_label.shape:
            raise UsageError(f"canvas {canvas.shape} and label {canvas_label.shape} must be equal (C, C) arrays")
        if min(canvas.shape) < self.img_size:
            raise UsageError(f"canvas {canvas.shape} is smaller than the output size {self.img_size}")
        self.randomize()
        grid = self.sampling_grid()
        image = torch.as_tensor(np.ascontiguousarray(canvas, dtype=np.float32))[None]
        label = torch.as_tensor(np.ascontiguousarray(canvas_label).astype(np.float32))[None]
        image = _plain(self.resampler(image, grid, mode="bilinear", padding_mode="zeros"))
        label = _plain(self.resampler(label, grid, mode="nearest", padding_mode="zeros"))
        if self.augment:
            for transform in self.intensity:
                image = _plain(torch.as_tensor(transform(image)))
        image = image.clamp_(0.0, 1.0).to(torch.float32).contiguous()
        sample = AugmentedSample(image, label[0].round().to(torch.int64).contiguous())
        if logits is not None:
            if logits.ndim != 3 or logits.shape[-2:] != (self.img_size, self.img_size):
                raise UsageError(f"logits must be (K, {self.img_size}, {self.img_size}), got {logits.shape}")
            source = torch.as_tensor(np.ascontiguousarray(logits, dtype=np.float32))
            ones = torch.ones((1,) + tuple(logits.shape[-2:]), dtype=torch.float32)
            moved = _plain(self.resampler(torch.cat([source, ones]), grid, mode="bilinear", padding_mode="zeros"))
            # Coverage 1 means all four source pixels lie inside the cached map.
            sample.logits_valid = (moved[-1] > 1.0 - 1e-4).contiguous()
            sample.logits = moved[:-1].contiguous()
        return sample


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if hasattr(x, "as_tensor") else x
