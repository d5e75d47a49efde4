"""The entries of the module's model list: every registered model, the registry's default first.

Kept out of the module file so that what the list shows (and in which order) is tested
without Slicer on the real bundled registry. The module adds the translated download
state ("downloaded" / "download 3.2 MB") to each entry's text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List

from ..weights.model_registry import ModelCard, ModelRegistry
from ..weights.resolution import is_available_offline

__all__ = ["ModelChoice", "model_choices"]


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model list.

    Args:
        model_id: registry id (the combo box item's data).
        text: title and version shown to the user.
        offline: the weights are bundled or cached and verified.
        size_bytes: download size of the weights.
        is_default: the registry's default model (preselected).
    """

    model_id: str
    text: str
    offline: bool
    size_bytes: int
    is_default: bool


def model_choices(registry: ModelRegistry,
                  available: Callable[[ModelCard, Path], bool] = is_available_offline) -> List[ModelChoice]:
    """Every model of ``registry``, the default first (what an empty model setting selects), then in file order.

    Args:
        registry: the loaded registry.
        available: whether a card's weights are usable offline (default: bundled or cached with the
            right SHA-256).
    """
    cards = list(registry.models.values())
    default = registry.default_model_id or (cards[0].id if cards else None)
    cards.sort(key=lambda card: card.id != default)  # stable: the others keep their order
    return [ModelChoice(card.id, f"{card.title} {card.version}", available(card, registry.directory),
                        card.size_bytes, card.id == default) for card in cards]
