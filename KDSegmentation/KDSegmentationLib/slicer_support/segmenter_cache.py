"""Keep the module's Segmenter (ONNX Runtime session) between clicks.

Opening a session costs a graph optimisation, and under "Auto" a CUDA probe with a
test inference; the module reuses the last Segmenter while the model, its weights, the
requested device and the thread count are unchanged, and opens a new one otherwise.
"""

from __future__ import annotations

import threading
from typing import Callable, Hashable, Optional, Tuple

from ..inference.pipeline import Segmenter
from ..progress import CancelToken, ProgressCallback
from ..weights.model_registry import ModelRegistry

__all__ = ["SegmenterCache"]

SegmenterFactory = Callable[..., Segmenter]


class SegmenterCache:
    """The most recently opened Segmenter, keyed by what decides its session.

    Args:
        factory: builds a Segmenter; ``Segmenter.from_registry`` (replaceable in tests).

    Safe to call from the worker thread while the GUI thread calls :meth:`clear`.
    """

    def __init__(self, factory: SegmenterFactory = Segmenter.from_registry) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._key: Optional[Hashable] = None
        self._segmenter: Optional[Segmenter] = None

    @staticmethod
    def key(registry: ModelRegistry, model_id: Optional[str], device: str, threads: Optional[int]) -> Tuple:
        card = registry.get(model_id)
        return (str(registry.path), card.id, card.sha256, device, threads)

    def get(self, registry: ModelRegistry, model_id: Optional[str], device: str, threads: Optional[int],
            progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
            read_timeout: Optional[float] = None) -> Segmenter:
        """The cached Segmenter when model, weights, device and threads match, else a new one.

        Args:
            registry: the loaded model registry.
            model_id: registry id (None: the default model).
            device: "auto", "cpu" or "cuda" as requested (Auto's choice is kept with it).
            threads: CPU threads (None: ONNX Runtime's default).
            progress, cancel: forwarded to a download when a new Segmenter is opened.
            read_timeout: seconds a download waits for data (None: its default).
        """
        key = self.key(registry, model_id, device, threads)
        with self._lock:
            if key == self._key and self._segmenter is not None:
                return self._segmenter
        timeouts = {} if read_timeout is None else {"read_timeout": read_timeout}
        segmenter = self._factory(model_id, device=device, threads=threads, registry=registry, progress=progress,
                                  cancel=cancel, **timeouts)
        with self._lock:
            self._key, self._segmenter = key, segmenter
        return segmenter

    def clear(self) -> None:
        """Drop the session (module closed, or the user asked to free its memory)."""
        with self._lock:
            self._key, self._segmenter = None, None
