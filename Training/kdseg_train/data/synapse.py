"""The Synapse layout of the TransUNet paper, read and written.

    <root>/train_npz/<case>_slice<NNN>.npz   arrays image (H, W) in [0, 1], label (H, W)
    <root>/test_vol_h5/<case>.npy.h5         datasets image (D, H, W), label (D, H, W)
    <root>/lists_Synapse/train.txt, test_vol.txt   one entry per line (slice or case name)

Images are already windowed (HU clipped to [-125, 275], scaled to [0, 1]); labels are
in Synapse order. Slices of a case are grouped back into one :class:`CTVolume`
(spacing unknown: 1 mm is recorded) so the same trainer and validation code runs on
them. :func:`write_synapse_case` converts our canonical volumes into this layout.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .ct_volumes import CTVolume

__all__ = ["read_synapse_split", "write_synapse_case"]

_SLICE = re.compile(r"^(?P<case>.+)_slice(?P<index>\d+)$")


def _names(root: Path, split: str, folder: str, suffix: str) -> List[str]:
    listing = root / "lists_Synapse" / f"{split}.txt"
    if listing.is_file():
        return [line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
    found = sorted(p.name[: -len(suffix)] for p in (root / folder).glob(f"*{suffix}"))
    if not found:
        raise FileNotFoundError(f"no {split} list at {listing} and no *{suffix} files in {root / folder}")
    return found


def read_synapse_split(root: Path, split: str = "train") -> List[CTVolume]:
    """Cases of ``split``: "train" reads ``train_npz`` slices, anything else ``test_vol_h5`` volumes."""
    root = Path(root)
    if split == "train":
        groups: Dict[str, List[tuple]] = defaultdict(list)
        for name in _names(root, split, "train_npz", ".npz"):
            match = _SLICE.match(name)
            if not match:
                raise ValueError(f"{name}: slice names must look like <case>_slice<NNN>")
            with np.load(root / "train_npz" / f"{name}.npz", allow_pickle=False) as data:
                groups[match["case"]].append((int(match["index"]), data["image"].astype(np.float32),
                                              data["label"].astype(np.uint8)))
        volumes = []
        for case, items in sorted(groups.items()):
            items.sort(key=lambda item: item[0])
            volumes.append(CTVolume(case, np.stack([i[1] for i in items]), np.stack([i[2] for i in items]),
                                    (1.0, 1.0, 1.0)))
        return volumes
    import h5py

    volumes = []
    for case in _names(root, split, "test_vol_h5", ".npy.h5"):
        with h5py.File(root / "test_vol_h5" / f"{case}.npy.h5", "r") as handle:
            volumes.append(CTVolume(case, handle["image"][()].astype(np.float32),
                                    handle["label"][()].astype(np.uint8), (1.0, 1.0, 1.0)))
    return volumes


def write_synapse_case(volume: CTVolume, root: Path, split: str = "train", skip_empty: bool = True) -> List[str]:
    """Write one case in the Synapse layout and append it to ``lists_Synapse/<split>.txt``.

    Args:
        volume: canonical, windowed case (image in [0, 1], labels in Synapse order).
        root: dataset root.
        split: "train" writes npz slices (only slices with a label when ``skip_empty``,
            as the TransUNet training set), otherwise one ``.npy.h5`` volume.

    Returns:
        The names appended to the list file.
    """
    root = Path(root)
    (root / "lists_Synapse").mkdir(parents=True, exist_ok=True)
    names = []
    if split == "train":
        (root / "train_npz").mkdir(parents=True, exist_ok=True)
        for z in range(volume.image.shape[0]):
            if skip_empty and not volume.labels[z].any():
                continue
            name = f"{volume.name}_slice{z:03d}"
            np.savez(root / "train_npz" / f"{name}.npz", image=volume.image[z].astype(np.float32),
                     label=volume.labels[z].astype(np.float32))
            names.append(name)
    else:
        import h5py

        (root / "test_vol_h5").mkdir(parents=True, exist_ok=True)
        target = root / "test_vol_h5" / f"{volume.name}.npy.h5"
        tmp = target.with_name(target.name + ".tmp")
        with h5py.File(tmp, "w") as handle:
            handle.create_dataset("image", data=volume.image.astype(np.float32), compression="gzip")
            handle.create_dataset("label", data=volume.labels.astype(np.float32), compression="gzip")
        os.replace(tmp, target)
        names.append(volume.name)
    with open(root / "lists_Synapse" / f"{split}.txt", "a", encoding="utf-8") as listing:
        listing.writelines(name + "\n" for name in names)
    return names
