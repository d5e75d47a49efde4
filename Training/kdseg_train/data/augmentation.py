"""TransUNet's random slice augmentation, built from MONAI transforms, reproducible per sample.

TransUNet (Chen et al. 2021, official ``datasets/dataset_synapse.py``) draws, for each
training slice: with p = 0.5 a random ``rot90`` (k in 0..3) followed by a flip along a
random axis; otherwise with p = 0.5 a rotation by an angle uniform in [-20°, 20°]; then
resizes to the network input (image cubic, label nearest). Here the draws come from a
MONAI :class:`~monai.transforms.Randomizable` state and are applied with MONAI's
deterministic ``Rotate90``, ``Flip``, ``Rotate`` and ``Resize`` transforms.

Where we differ, and why:
- the rotation interpolates the image bicubically and the label with nearest neighbour
  (TransUNet uses order 0 for both, which leaves jagged image edges); bicubic
  overshoot is clipped back to [0, 1];
- the final resize to ``img_size`` defaults to bilinear, edge-aligned
  (``align_corners=False``), because that is exactly how the Lib resizes slices at
  inference (``KDSegmentationLib.inference.slice_resampling``); ``resize_mode="bicubic"`` gives
  TransUNet's cubic resize.

Reproducibility: :meth:`TransUNetAugmentation.reseed` seeds the state from
``(seed, epoch, index)``, so a sample's augmentation depends on nothing else (not on
worker count, not on what was drawn before) and a resumed run replays it exactly.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Flip, Randomizable, Resize, Rotate, Rotate90
from ..errors import UsageError

__all__ = ["TransUNetAugmentation", "sample_seed", "augment_slice", "resize_pair"]

ArrayLike = Union[np.ndarray, torch.Tensor]

_IMAGE_MODES = ("bilinear", "bicubic", "nearest")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed that depends only on (seed, epoch, index)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]).generate_state(1)[0])


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else x


def _as_channel_first(image: ArrayLike) -> torch.Tensor:
    img = torch.as_tensor(np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3:
        raise ValueError(f"image must be (H, W) or (C, H, W), got shape {tuple(img.shape)}")
    return img.to(torch.float32)


class TransUNetAugmentation(Randomizable):
    """Random rot90 + flip or small rotation, then resize to ``img_size``.

    Args:
        img_size: output size S (square), or None to keep the input size.
        augment: False gives only the resize (validation/evaluation transform).
        rot90_flip_prob: probability of the rot90 + flip branch (TransUNet: 0.5).
        rotate_prob: probability of the rotation branch when the first is not taken (0.5).
        max_degrees: rotation range ±max_degrees (TransUNet: 20).
        rotate_mode: image interpolation of the rotation ("bicubic", "bilinear", "nearest").
        resize_mode: image interpolation of the resize ("bilinear" as the Lib at inference,
            or "bicubic" as TransUNet).
        seed: base seed combined with (epoch, index) by :meth:`reseed`.
        clip: clip the image to [0, 1] after interpolation (windowed CT / RGB in [0, 1]).

    Call:
        ``aug(image, label)`` with image (H, W) or (C, H, W) float, label (H, W) integer
        (numpy or torch). Returns image (C, S, S) float32 and label (S, S) int64.
    """

    def __init__(self, img_size: Optional[int] = 224, augment: bool = True, rot90_flip_prob: float = 0.5,
                 rotate_prob: float = 0.5, max_degrees: float = 20.0, rotate_mode: str = "bicubic",
                 resize_mode: str = "bilinear", seed: int = 1234, clip: bool = True) -> None:
        if img_size is not None and int(img_size) <= 0:
            raise UsageError(f"img_size must be positive, got {img_size}")
        for name, p in (("rot90_flip_prob", rot90_flip_prob), ("rotate_prob", rotate_prob)):
            if not 0.0 <= p <= 1.0:
                raise UsageError(f"{name} must be in [0, 1], got {p}")
        for name, mode in (("rotate_mode", rotate_mode), ("resize_mode", resize_mode)):
            if mode not in _IMAGE_MODES:
                raise UsageError(f"{name} must be one of {', '.join(_IMAGE_MODES)}, got {mode!r}")
        if max_degrees < 0:
            raise UsageError(f"max_degrees must be >= 0, got {max_degrees}")
        self.img_size = None if img_size is None else int(img_size)
        self.augment = bool(augment)
        self.rot90_flip_prob, self.rotate_prob = float(rot90_flip_prob), float(rotate_prob)
        self.max_degrees = float(max_degrees)
        self.rotate_mode, self.resize_mode = rotate_mode, resize_mode
        self.seed, self.clip = int(seed), bool(clip)
        self._branch, self._k, self._axis, self._angle = "none", 0, 0, 0.0
        self.set_random_state(seed=self.seed)

    def reseed(self, epoch: int, index: int) -> "TransUNetAugmentation":
        """Seed the random state for sample ``index`` of ``epoch`` (call before ``__call__``)."""
        self.set_random_state(seed=sample_seed(self.seed, epoch, index))
        return self

    def randomize(self, data: object = None) -> None:
        """Draw the branch and its parameters from ``self.R`` (TransUNet's order of draws)."""
        self._branch = "none"
        if not self.augment:
            return
        if self.R.random_sample() < self.rot90_flip_prob:
            self._branch = "rot90_flip"
            self._k = int(self.R.randint(0, 4))
            self._axis = int(self.R.randint(0, 2))
        elif self.R.random_sample() < self.rotate_prob:
            self._branch = "rotate"
            self._angle = float(np.deg2rad(self.R.uniform(-self.max_degrees, self.max_degrees)))

    @property
    def last_parameters(self) -> dict:
        """What the last call applied (for logging and tests)."""
        return {"branch": self._branch, "k": self._k, "axis": self._axis, "angle_rad": self._angle}

    def __call__(self, image: ArrayLike, label: ArrayLike) -> Tuple[torch.Tensor, torch.Tensor]:
        img = _as_channel_first(image)
        lab = torch.as_tensor(np.ascontiguousarray(label) if isinstance(label, np.ndarray) else label)
        if lab.ndim != 2 or tuple(lab.shape) != tuple(img.shape[-2:]):
            raise ValueError(f"label must be (H, W) matching the image {tuple(img.shape[-2:])}, "
                             f"got {tuple(lab.shape)}")
        lab = lab.to(torch.float32)[None]
        self.randomize()
        if self._branch == "rot90_flip":
            rot, flip = Rotate90(self._k, spatial_axes=(0, 1)), Flip(spatial_axis=self._axis)
            img, lab = flip(rot(img)), flip(rot(lab))
        elif self._branch == "rotate":
            img = Rotate(self._angle, keep_size=True, mode=self.rotate_mode, padding_mode="zeros")(img)
            lab = Rotate(self._angle, keep_size=True, mode="nearest", padding_mode="zeros")(lab)
        if self.img_size is not None and tuple(img.shape[-2:]) != (self.img_size, self.img_size):
            size = (self.img_size, self.img_size)
            img = Resize(size, mode=self.resize_mode, align_corners=None if self.resize_mode == "nearest" else False,
                         anti_aliasing=False)(img)
            lab = Resize(size, mode="nearest")(lab)
        img = _plain(torch.as_tensor(img)).to(torch.float32)
        if self.clip:
            img = img.clamp_(0.0, 1.0)
        lab = _plain(torch.as_tensor(lab))[0].round().to(torch.int64)
        return img.contiguous(), lab.contiguous()


def augment_slice(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                  max_degrees: float = 20.0) -> Tuple[np.ndarray, np.ndarray]:
    """One TransUNet augmentation of an (H, W) slice at its own size, seeded from ``rng``.

    Returns:
        image (H, W) float32, label (H, W) int64.
    """
    aug = TransUNetAugmentation(img_size=None, max_degrees=max_degrees, seed=int(rng.integers(0, 2 ** 31 - 1)))
    img, lab = aug(image, label)
    return img[0].numpy(), lab.numpy()


def resize_pair(image: ArrayLike, label: ArrayLike, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Image (C, S, S) bilinear edge-aligned (as the Lib at inference) and label (S, S) nearest."""
    return TransUNetAugmentation(img_size=size, augment=False)(image, label)
