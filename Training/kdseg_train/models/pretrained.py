"""``model.pretrained``: ImageNet-21k R50+ViT-B/16 weights from the official ``.npz`` or from timm.

:func:`load_pretrained` picks the reader by file type and turns every mismatch into one
``ValueError`` that names the file and what differs, raised while the model is built,
before any training step.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Union

from torch import nn
from ..errors import UsageError

__all__ = ["load_pretrained", "PRETRAINED_SUFFIXES"]

PRETRAINED_SUFFIXES = (".npz", ".safetensors", ".pth", ".pt", ".bin")


def load_pretrained(model: nn.Module, path: Union[str, Path]) -> List[str]:
    """Load ``R50+ViT-B_16.npz`` (official) or timm ``vit_base_r50_s16_224.orig_in21k`` weights into ``model``.

    Returns:
        The loaded parameter names.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unknown file type, or the file does not fit the model (keys, layers or
            shapes named).
    """
    from .timm_vit_r50 import load_timm_vit_r50
    from .vit_npz import load_vit_r50_npz

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained {path} does not exist (the official R50+ViT-B_16.npz, or timm's "
                                "vit_base_r50_s16_224.orig_in21k model.safetensors)")
    if path.suffix not in PRETRAINED_SUFFIXES:
        raise UsageError(f"model.pretrained {path}: unknown file type {path.suffix!r}; give the official "
                         f"R50+ViT-B_16.npz or timm weights ({', '.join(PRETRAINED_SUFFIXES[1:])})")
    try:
        if path.suffix == ".npz":
            return load_vit_r50_npz(model, path)
        return load_timm_vit_r50(model, path)
    except KeyError as exc:
        key = str(exc.args[0]).replace(" is not a file in the archive", "")  # numpy's NpzFile wording
        raise UsageError(f"model.pretrained {path} is not the R50+ViT-B_16 ImageNet-21k file for this model: it "
                         f"lacks the array {key!r}") from None
    except ValueError as exc:
        raise UsageError(f"model.pretrained {path}: {exc}") from None
