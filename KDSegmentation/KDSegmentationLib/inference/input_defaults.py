"""Where new models start: the HU window and slice size of TransUNet's Synapse preprocessing.

At inference the model card's ``input.hu_window`` and ``input.height``/``width`` are what
count; nothing in the Lib's pipeline reads these. Training's config defaults, the converter
and the training data readers read them from here, and training writes the values it used
into the model card it exports. Kept free of imports so command-line ``--help`` stays fast.
"""

from __future__ import annotations

from typing import Tuple

__all__ = ["DEFAULT_HU_WINDOW", "DEFAULT_INPUT_SIZE"]

DEFAULT_HU_WINDOW: Tuple[float, float] = (-125.0, 275.0)
"""HU window (low, high) clipped and scaled to [0, 1], as TransUNet's Synapse data."""

DEFAULT_INPUT_SIZE: int = 224
"""Square slice size in pixels that TransUNet trains and evaluates at."""
