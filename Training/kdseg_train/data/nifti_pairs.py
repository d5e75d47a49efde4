"""CT image/label pairs (NIfTI, NRRD, MHA files or DICOM series folders) as training and evaluation data.

Pairs come from

- two folders, matched by case name (``imagesTr/img0001.nii.gz`` <-> ``labelsTr/label0001.nii.gz``,
  ``ct/case_07/`` (DICOM folder) <-> ``seg/case_07.nii.gz``, nnU-Net's ``_0000`` channel
  suffix dropped), see :func:`pairs_from_folders`;
- a MONAI / Medical-Decathlon datalist JSON (``{"training": [{"image": ..., "label": ...}]}``,
  paths relative to the JSON file), read with ``monai.data.load_decathlon_datalist``;
- explicit ``(image, label)`` lists.

Volumes are loaded with :func:`~kdseg_train.data.ct_volumes.load_ct_volume`: canonical
orientation and window as the Lib at inference, labels resampled in physical space,
remapped to Synapse order with ``IGNORE_INDEX`` for organs the dataset does not label.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from torch.utils.data import Dataset

from ..errors import UsageError
from .augmentation import TransUNetAugmentation
from .ct_volumes import DEFAULT_HU_WINDOW, CTVolume, load_ct_volume
from .label_maps import IGNORE_INDEX, resolve_remap
from .slices import AxialSliceDataset

__all__ = ["CTVolume", "ImageLabelPair", "pairs_from_folders", "pairs_from_datalist", "load_volumes",
           "NiftiSliceDataset", "NiftiVolumeDataset", "case_name"]

PathLike = Union[str, Path]

_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# Words that name the role of a file rather than the case ("img0001" and "label0001" are case 0001).
_ROLE_WORDS = re.compile(r"(?<![a-z])(images?|imgs?|labels?|segs?|segmentations?|masks?|gt|ct|volumes?)(?=[^a-z]|$)")


@dataclass(frozen=True)
class ImageLabelPair:
    """One case: CT image (file or DICOM folder) and its label map."""

    name: str
    image: Path
    label: Path


def case_name(path: Path) -> str:
    """File or folder name without image suffixes (``img0001.nii.gz`` -> ``img0001``)."""
    name = path.name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _case_key(name: str) -> str:
    key = re.sub(r"_0000$", "", name.lower())
    key = _ROLE_WORDS.sub("", key)
    return re.sub(r"[^a-z0-9]", "", key)


def _candidates(folder: Path, allow_dirs: bool) -> List[Path]:
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.name.lower().endswith(_SUFFIXES):
            found.append(entry)
        elif allow_dirs and entry.is_dir():
            found.append(entry)  # a DICOM series folder
    return found


def pairs_from_folders(images: PathLike, labels: PathLike) -> List[ImageLabelPair]:
    """Match the images in ``images`` with the label maps in ``labels`` by case name.

    Names are matched exactly first, then after dropping role words (img, image, label,
    seg, mask, ct, ...), separators and nnU-Net's ``_0000`` suffix. Sub-folders of
    ``images`` are DICOM series.

    Raises:
        FileNotFoundError: a folder is missing or holds no images.
        ValueError: an image without a label, or two files with the same case key.
    """
    images, labels = Path(images), Path(labels)
    for folder in (images, labels):
        if not folder.is_dir():
            raise FileNotFoundError(f"data folder {folder} does not exist")
    image_paths = _candidates(images, allow_dirs=True)
    label_paths = _candidates(labels, allow_dirs=False)
    if not image_paths:
        raise FileNotFoundError(f"{images} holds no images (.nii.gz, .nii, .nrrd, .mha or DICOM series folders)")
    exact = {case_name(p): p for p in label_paths}
    by_key = {}
    for path in label_paths:
        key = _case_key(case_name(path))
        if key in by_key:
            raise UsageError(f"label files {by_key[key].name} and {path.name} both match case {key!r}; "
                             "rename one or use a datalist JSON")
        by_key[key] = path
    pairs, missing = [], []
    for path in image_paths:
        name = case_name(path)
        label = exact.get(name) or by_key.get(_case_key(name))
        if label is None:
            missing.append(path.name)
        else:
            pairs.append(ImageLabelPair(name, path, label))
    if missing:
        raise UsageError(f"{len(missing)} image(s) in {images} have no label in {labels}: {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''}; name labels like their images (e.g. img0001 <-> "
                         "label0001) or use a datalist JSON")
    return pairs


def pairs_from_datalist(path: PathLike, key: str = "training", base_dir: Optional[PathLike] = None
                        ) -> List[ImageLabelPair]:
    """Pairs of a MONAI datalist JSON section (paths relative to ``base_dir``, default the JSON's folder).

    Raises:
        FileNotFoundError: missing JSON or a listed file that does not exist.
        ValueError: the section is missing or an entry has no image/label.
    """
    from monai.data import load_decathlon_datalist

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"datalist {path} does not exist")
    try:
        entries = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=key,
                                          base_dir=str(base_dir) if base_dir is not None else None)
    except ValueError as exc:
        raise UsageError(f"datalist {path}: {exc} (sections are e.g. 'training', 'validation')") from None
    pairs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise UsageError(f"datalist {path} [{key}][{i}] needs 'image' and 'label'")
        image, label = Path(entry["image"]), Path(entry["label"])
        for role, file in (("image", image), ("label", label)):
            if not file.exists():
                raise FileNotFoundError(f"datalist {path} [{key}][{i}]: {role} {file} does not exist")
        pairs.append(ImageLabelPair(str(entry.get("name") or case_name(image)), image, label))
    if not pairs:
        raise UsageError(f"datalist {path} section {key!r} is empty")
    return pairs


def load_volumes(pairs: Sequence[ImageLabelPair], remap: Union[str, Mapping[int, int]] = "identity",
                 unlabeled: Iterable[int] = (), hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
                 ignore_index: int = IGNORE_INDEX) -> List[CTVolume]:
    """Load every pair into memory (canonical, windowed, remapped; see :func:`load_ct_volume`)."""
    unlabeled = tuple(unlabeled)
    return [load_ct_volume(p.image, p.label, remap, unlabeled, hu_window, p.name, ignore_index) for p in pairs]


class NiftiSliceDataset(AxialSliceDataset):
    """Axial training slices of image/label pairs, loaded once into memory.

    Args:
        pairs: the cases.
        remap: label remap (table name or mapping), e.g. "btcv", "totalsegmentator".
        unlabeled: Synapse labels the dataset does not annotate (background -> ignore).
        transform: per-sample transform (default: TransUNet augmentation at 224).
        holdout: z fractions [a, b) of each volume kept out for validation.
        hu_window: the model card's HU window.

    Returns per item:
        image (1, S, S) float32 in [0, 1], label (S, S) int64 (``IGNORE_INDEX`` = unknown).
    """

    def __init__(self, pairs: Sequence[ImageLabelPair], remap: Union[str, Mapping[int, int]] = "identity",
                 unlabeled: Iterable[int] = (), transform: Optional[TransUNetAugmentation] = None,
                 holdout: Optional[Tuple[float, float]] = None,
                 hu_window: Sequence[float] = DEFAULT_HU_WINDOW) -> None:
        resolve_remap(remap)  # fail on a bad table before reading any volume
        super().__init__(load_volumes(pairs, remap, unlabeled, hu_window),
                         transform=transform if transform is not None else TransUNetAugmentation(224),
                         holdout=holdout)
        self.pairs = list(pairs)


class NiftiVolumeDataset(Dataset):
    """Whole cases for evaluation, loaded one at a time (spacing kept for mm metrics).

    Args:
        pairs, remap, unlabeled, hu_window: as :class:`NiftiSliceDataset`.
        slices: z fractions [a, b) to keep of each case (the validation band), or None.

    Returns per item:
        :class:`CTVolume` (``first_slice`` says where the band starts in the source).
    """

    def __init__(self, pairs: Sequence[ImageLabelPair], remap: Union[str, Mapping[int, int]] = "identity",
                 unlabeled: Iterable[int] = (), hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
                 slices: Optional[Tuple[float, float]] = None) -> None:
        resolve_remap(remap)
        if slices is not None and not 0.0 <= float(slices[0]) < float(slices[1]) <= 1.0:
            raise UsageError(f"slices must be fractions [a, b] with 0 <= a < b <= 1, got {slices}")
        self.pairs, self.remap, self.unlabeled = list(pairs), remap, tuple(unlabeled)
        self.hu_window, self.slices = tuple(hu_window), slices

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> CTVolume:
        pair = self.pairs[index]
        volume = load_ct_volume(pair.image, pair.label, self.remap, self.unlabeled, self.hu_window, pair.name)
        return volume.slice_range(*self.slices) if self.slices is not None else volume

    def __iter__(self) -> Iterator[CTVolume]:
        return (self[i] for i in range(len(self)))
