"""The Synapse layout of the TransUNet paper, read and written.

    <root>/train_npz/<case>_slice<NNN>.npz   arrays image (H, W) in [0, 1], label (H, W)
    <root>/test_vol_h5/<case>.npy.h5         datasets image (D, H, W), label (D, H, W)
    <root>/lists_Synapse/train.txt, test_vol.txt   one entry per line (slice or case name)

Images are already windowed (HU clipped to [-125, 275], scaled to [0, 1]); labels are
in Synapse order. The official code keeps the lists in a separate folder
(``lists/lists_Synapse``): pass it as ``list_dir``; without a list, the files present
are used in sorted order.

- :class:`SynapseSliceDataset`: the ``train_npz`` slices, one item per slice, through a
  seeded transform (TransUNet augmentation).
- :class:`SynapseVolumeDataset`: the ``test_vol_h5`` volumes, one (case, image, label)
  per item, for case-wise evaluation.
- :func:`read_synapse_split`: a split as :class:`CTVolume` objects (slices of a case
  grouped back into one volume; spacing unknown, 1 mm recorded).
- :func:`write_synapse_case`: our canonical volumes into this layout (the converter).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from KDSegmentationLib.atomic_files import atomic_file, write_text_atomic

from ..errors import UsageError
from .augmentation import TransUNetAugmentation
from .ct_volumes import CTVolume

__all__ = ["SynapseSliceDataset", "SynapseVolumeDataset", "read_synapse_split", "write_synapse_case",
           "synapse_names", "read_synapse_slice", "read_synapse_volume"]

_SLICE = re.compile(r"^(?P<case>.+)_slice(?P<index>\d+)$")


def synapse_names(root: Path, split: str, folder: str, suffix: str, list_dir: Optional[Path] = None) -> List[str]:
    """Entry names of ``split`` from ``<list_dir or root/lists_Synapse>/<split>.txt``, else the files present.

    Raises:
        FileNotFoundError: missing folder, list naming absent files, or nothing at all.
    """
    root = Path(root)
    if not (root / folder).is_dir():
        raise FileNotFoundError(f"Synapse root {root} has no {folder}/ folder (expected the TransUNet layout "
                                f"{folder}/*{suffix}; convert NIfTI pairs with `kdseg-train convert`)")
    listing = (Path(list_dir) if list_dir is not None else root / "lists_Synapse") / f"{split}.txt"
    if listing.is_file():
        names = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
        missing = [n for n in names if not (root / folder / f"{n}{suffix}").is_file()]
        if missing:
            raise FileNotFoundError(f"{listing} lists {len(missing)} entries without a file in {root / folder}, "
                                    f"e.g. {missing[0]}{suffix}; fix the list or the root")
    elif list_dir is not None:
        raise FileNotFoundError(f"no split list {listing}")
    else:
        names = sorted(p.name[: -len(suffix)] for p in (root / folder).glob(f"*{suffix}"))
    if not names:
        raise FileNotFoundError(f"no {split} entries: {listing} is missing or empty and {root / folder} holds no "
                                f"*{suffix} files")
    return names


def _check_arrays(source: str, image: np.ndarray, label: np.ndarray, ndim: int) -> np.ndarray:
    """Validate one stored image/label pair; return the label as int64."""
    if image.ndim != ndim or image.shape != label.shape:
        raise UsageError(f"{source}: image {image.shape} and label {label.shape} must be {ndim}D of the same shape")
    if not np.isfinite(image).all() or image.min() < -1e-6 or image.max() > 1 + 1e-6:
        raise UsageError(f"{source}: image values must be windowed to [0, 1] (HU clipped to [-125, 275], then "
                         "scaled); convert raw CT with `kdseg-train convert`")
    if not np.array_equal(label, np.round(label)) or label.min() < 0 or label.max() > 255:
        raise UsageError(f"{source}: label must hold integer class ids in [0, 255]")
    return label.astype(np.int64)


def read_synapse_slice(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """One ``train_npz`` file: image (H, W) float32 in [0, 1], label (H, W) int64."""
    try:
        with np.load(path, allow_pickle=False) as data:
            image, label = data["image"].astype(np.float32), data["label"]
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise UsageError(f"cannot read Synapse slice {path} (arrays 'image' and 'label'): {exc}") from None
    return image, _check_arrays(str(path), image, label, 2)


def read_synapse_volume(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """One ``test_vol_h5`` file: image (D, H, W) float32 in [0, 1], label (D, H, W) int64."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            image = handle["image"][()].astype(np.float32)
            label = handle["label"][()]
    except (OSError, KeyError) as exc:
        raise UsageError(f"cannot read Synapse volume {path} (datasets 'image' and 'label'): {exc}") from None
    return image, _check_arrays(str(path), image, label, 3)


class SynapseSliceDataset(Dataset):
    """Slices of ``train_npz`` (TransUNet's training set), one per item, read lazily.

    Args:
        root: dataset root holding ``train_npz/``.
        split: name of the list file (``train`` -> ``lists_Synapse/train.txt``).
        transform: callable ``(image (H, W), label (H, W)) -> (image, label)``; one with
            ``reseed`` (e.g. :class:`TransUNetAugmentation`) is reseeded per
            (epoch, index). None returns the stored slice as tensors.
        list_dir: folder of the list files (default ``root/lists_Synapse``; the official
            code keeps them in ``lists/lists_Synapse``).

    Returns per item:
        image (1, S, S) float32 in [0, 1], label (S, S) int64.
    """

    def __init__(self, root: Union[str, Path], split: str = "train",
                 transform: Optional[TransUNetAugmentation] = None, list_dir: Optional[Path] = None) -> None:
        self.root, self.split, self.transform = Path(root), split, transform
        self.names = synapse_names(self.root, split, "train_npz", ".npz", list_dir)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        image, label = read_synapse_slice(self.root / "train_npz" / f"{self.names[index]}.npz")
        if self.transform is None:
            return torch.from_numpy(image)[None], torch.from_numpy(label)
        if hasattr(self.transform, "reseed"):
            self.transform.reseed(self.epoch, index)
        return self.transform(image, label)


class SynapseVolumeDataset(Dataset):
    """Volumes of ``test_vol_h5`` (TransUNet's test set), one case per item, read lazily.

    Args:
        root: dataset root holding ``test_vol_h5/``.
        split: list name (``test_vol`` -> ``lists_Synapse/test_vol.txt``).
        list_dir: folder of the list files (default ``root/lists_Synapse``).

    Returns per item:
        (case_name, image (D, H, W) float32 in [0, 1], label (D, H, W) int64). The layout
        stores no voxel spacing: :attr:`spacing_zyx` is (1, 1, 1), which is also how
        TransUNet computes its HD95 (in voxels).
    """

    spacing_zyx: Tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __init__(self, root: Union[str, Path], split: str = "test_vol", list_dir: Optional[Path] = None) -> None:
        self.root, self.split = Path(root), split
        self.names = synapse_names(self.root, split, "test_vol_h5", ".npy.h5", list_dir)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Tuple[str, np.ndarray, np.ndarray]:
        case = self.names[index]
        image, label = read_synapse_volume(self.root / "test_vol_h5" / f"{case}.npy.h5")
        return case, image, label

    def volume(self, index: int) -> CTVolume:
        """Item ``index`` as a :class:`CTVolume` (labels uint8)."""
        case, image, label = self[index]
        return CTVolume(case, image, label.astype(np.uint8), self.spacing_zyx)


def read_synapse_split(root: Path, split: str = "train", list_dir: Optional[Path] = None) -> List[CTVolume]:
    """Cases of ``split`` as volumes: "train" groups ``train_npz`` slices by case, other splits read ``test_vol_h5``."""
    root = Path(root)
    if split != "train":
        dataset = SynapseVolumeDataset(root, split, list_dir)
        return [dataset.volume(i) for i in range(len(dataset))]
    groups: Dict[str, List[tuple]] = defaultdict(list)
    for name in synapse_names(root, split, "train_npz", ".npz", list_dir):
        match = _SLICE.match(name)
        if not match:
            raise UsageError(f"{name}: slice names must look like <case>_slice<NNN>")
        image, label = read_synapse_slice(root / "train_npz" / f"{name}.npz")
        groups[match["case"]].append((int(match["index"]), image, label.astype(np.uint8)))
    volumes = []
    for case, items in sorted(groups.items()):
        items.sort(key=lambda item: item[0])
        volumes.append(CTVolume(case, np.stack([i[1] for i in items]), np.stack([i[2] for i in items]),
                                (1.0, 1.0, 1.0), items[0][0]))
    return volumes


def _append_to_list(listing: Path, names: List[str]) -> None:
    """Add ``names`` to a list file once each (re-running a conversion does not duplicate entries)."""
    existing = listing.read_text(encoding="utf-8").split() if listing.is_file() else []
    known = set(existing)
    merged = existing + [n for n in names if n not in known]
    write_text_atomic(listing, "".join(n + "\n" for n in merged))


def write_synapse_case(volume: CTVolume, root: Path, split: str = "train", skip_empty: bool = False) -> List[str]:
    """Write one case in the Synapse layout and add it to ``lists_Synapse/<split>.txt``.

    Every file is written to a temporary name and renamed, so an interrupted conversion
    leaves no truncated file.

    Args:
        volume: canonical, windowed case (image in [0, 1], labels in Synapse order).
        root: dataset root.
        split: "train" writes ``train_npz/<case>_slice<NNN>.npz`` slices (all slices, as
            TransUNet's 2211 training slices; only labelled ones with ``skip_empty``),
            any other split one ``test_vol_h5/<case>.npy.h5`` volume.

    Returns:
        The names added to the list file.
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
            # keep_suffix: np.savez appends ".npz" to a name without it.
            with atomic_file(root / "train_npz" / f"{name}.npz", keep_suffix=True) as tmp:
                np.savez(tmp, image=volume.image[z].astype(np.float32), label=volume.labels[z].astype(np.float32))
            names.append(name)
    else:
        import h5py

        (root / "test_vol_h5").mkdir(parents=True, exist_ok=True)
        target = root / "test_vol_h5" / f"{volume.name}.npy.h5"
        with atomic_file(target) as tmp, h5py.File(tmp, "w") as handle:
            handle.create_dataset("image", data=volume.image.astype(np.float32), compression="gzip")
            handle.create_dataset("label", data=volume.labels.astype(np.float32), compression="gzip")
        names.append(volume.name)
    _append_to_list(root / "lists_Synapse" / f"{split}.txt", names)
    return names
