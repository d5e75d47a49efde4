"""Training data: Synapse layout, CT image/label pairs, Cataract-1K frames, augmentation, label remaps.

:func:`build_dataset` turns one YAML data entry into a dataset; its ``format`` field
chooses the reader::

    {format: synapse, root: data/Synapse, split: train}                  # train_npz slices
    {format: synapse, root: data/Synapse, split: test_vol}               # test_vol_h5 volumes
    {format: nifti, datalist: btcv.json, remap: btcv}                    # MONAI datalist
    {format: nifti, images: imagesTr, labels: labelsTr, remap: btcv, holdout: [0.8, 1.0]}
    {format: nifti, image: ct/ (DICOM), label: seg.nii.gz, remap: totalsegmentator,
     items: volumes, slices: [0.8, 1.0]}                                 # evaluation band
    {format: cataract1k, root: data/cataract1k, split: train, task: anatomy_instrument}

Common keys: ``img_size`` (224), ``augment`` (true for training slices), ``seed`` (1234),
``augmentation`` (options of :class:`TransUNetAugmentation`). Slice datasets return
``(image (C, S, S) float32, label (S, S) int64)`` and have ``set_epoch``; volume
datasets return ``(case, image (D, H, W), label (D, H, W))`` (Synapse) or
:class:`CTVolume` objects (NIfTI pairs, spacing kept).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping

from torch.utils.data import Dataset

from KDSegmentationLib.inference.input_defaults import DEFAULT_INPUT_SIZE

from ..errors import UsageError
from .augmentation import TransUNetAugmentation, augment_slice, resize_pair, sample_seed
from .cataract import CATARACT_TASKS, Cataract1KDataset
from .ct_volumes import DEFAULT_HU_WINDOW, CTVolume, load_ct_volume
from .label_maps import (BTCV_TO_SYNAPSE, IGNORE_INDEX, REMAP_TABLES, SYNAPSE_NUM_CLASSES, TOTALSEGMENTATOR_TO_SYNAPSE,
                         remap_labels, resolve_remap)
from .nifti_pairs import (ImageLabelPair, NiftiSliceDataset, NiftiVolumeDataset, pairs_from_datalist,
                          pairs_from_folders)
from .slices import AxialSliceDataset
from .synapse import SynapseSliceDataset, SynapseVolumeDataset, read_synapse_split, write_synapse_case

__all__ = ["build_dataset", "build_transform", "pairs_from_config", "dataset_num_classes", "DATASET_FORMATS",
           "TransUNetAugmentation", "augment_slice", "resize_pair", "sample_seed",
           "Cataract1KDataset", "CATARACT_TASKS", "CTVolume", "load_ct_volume", "DEFAULT_HU_WINDOW",
           "IGNORE_INDEX", "SYNAPSE_NUM_CLASSES", "REMAP_TABLES", "BTCV_TO_SYNAPSE", "TOTALSEGMENTATOR_TO_SYNAPSE",
           "remap_labels", "resolve_remap", "ImageLabelPair", "NiftiSliceDataset", "NiftiVolumeDataset",
           "pairs_from_datalist", "pairs_from_folders", "AxialSliceDataset", "SynapseSliceDataset",
           "SynapseVolumeDataset", "read_synapse_split", "write_synapse_case"]

DATASET_FORMATS = ("synapse", "nifti", "cataract1k")

_COMMON_KEYS = {"format", "name", "img_size", "augment", "seed", "augmentation", "items"}
_FORMAT_KEYS = {
    "synapse": {"root", "split", "list_dir"},
    "nifti": {"datalist", "datalist_key", "base_dir", "images", "labels", "pairs", "image", "label", "remap",
              "unlabeled", "hu_window", "holdout", "slices"},
    "cataract1k": {"root", "split", "task", "mask_encoding", "cases"},
}
_AUGMENTATION_KEYS = {"rot90_flip_prob", "rotate_prob", "max_degrees", "rotate_mode", "resize_mode", "clip"}


def build_transform(cfg: Mapping[str, Any], augment_default: bool = True) -> TransUNetAugmentation:
    """The per-sample transform of a data entry (resize to ``img_size``, TransUNet augmentation if ``augment``)."""
    options = dict(cfg.get("augmentation") or {})
    unknown = set(options) - _AUGMENTATION_KEYS
    if unknown:
        raise UsageError(f"data entry augmentation: unknown option(s) {sorted(unknown)}; known: "
                         f"{', '.join(sorted(_AUGMENTATION_KEYS))}")
    return TransUNetAugmentation(img_size=int(cfg.get("img_size", DEFAULT_INPUT_SIZE)), augment=bool(cfg.get("augment",
                                 augment_default)), seed=int(cfg.get("seed", 1234)), **options)


def _path(cfg: Mapping[str, Any], key: str) -> Path:
    value = cfg.get(key)
    if not value:
        raise UsageError(f"data entry ({cfg.get('format')}) needs {key}:")
    path = Path(value).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data entry ({cfg.get('format')}): {key} {path} does not exist (relative paths are "
                                "taken from the folder you run kdseg-train in)")
    return path


def _fractions(cfg: Mapping[str, Any], key: str):
    value = cfg.get(key)
    if value is None:
        return None
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise UsageError(f"data entry {key}: must be [start, stop] fractions of the z extent, got {value!r}") from None
    if not 0.0 <= a < b <= 1.0:
        raise UsageError(f"data entry {key}: need 0 <= start < stop <= 1, got [{a}, {b}]")
    return a, b


def pairs_from_config(cfg: Mapping[str, Any]) -> List[ImageLabelPair]:
    """Image/label pairs of a ``format: nifti`` entry (exactly one of datalist, images+labels, pairs, image+label)."""
    given = [k for k in ("datalist", "images", "pairs", "image") if cfg.get(k) is not None]
    if len(given) != 1:
        raise UsageError("a nifti data entry needs exactly one of datalist:, images: + labels: (folders), pairs: "
                         f"[{{image, label}}] or image: + label:; got {given or 'none'}")
    if given[0] == "datalist":
        return pairs_from_datalist(_path(cfg, "datalist"), cfg.get("datalist_key", "training"), cfg.get("base_dir"))
    if given[0] == "images":
        return pairs_from_folders(_path(cfg, "images"), _path(cfg, "labels"))
    if given[0] == "pairs":
        out = []
        for i, item in enumerate(cfg["pairs"]):
            if not isinstance(item, Mapping) or "image" not in item or "label" not in item:
                raise UsageError(f"data entry pairs[{i}] needs image: and label:")
            image, label = _path(item, "image"), _path(item, "label")
            out.append(ImageLabelPair(str(item.get("name") or _case(image)), image, label))
        return out
    image, label = _path(cfg, "image"), _path(cfg, "label")
    return [ImageLabelPair(str(cfg.get("name") or _case(image)), image, label)]


def _case(path: Path) -> str:
    from .nifti_pairs import case_name

    return case_name(path)


def dataset_num_classes(cfg: Mapping[str, Any]) -> int:
    """Classes (with background) of the labels a data entry yields."""
    if cfg.get("format") == "cataract1k":
        return CATARACT_TASKS[cfg.get("task", "instrument")]
    return SYNAPSE_NUM_CLASSES


def build_dataset(cfg: Mapping[str, Any]) -> Dataset:
    """Build the dataset a YAML data entry describes (see the module docstring).

    Raises:
        ValueError: unknown format or key, bad values (named in the message).
        FileNotFoundError: missing root, files or lists.
    """
    if not isinstance(cfg, Mapping):
        raise UsageError(f"a data entry must be a mapping with a format: field, got {cfg!r}")
    fmt = cfg.get("format")
    if fmt not in DATASET_FORMATS:
        raise UsageError(f"data entry format must be one of {', '.join(DATASET_FORMATS)}, got {fmt!r}")
    unknown = set(cfg) - _COMMON_KEYS - _FORMAT_KEYS[fmt]
    if unknown:
        raise UsageError(f"data entry ({fmt}): unknown key(s) {sorted(unknown)}; known: "
                         f"{', '.join(sorted(_COMMON_KEYS | _FORMAT_KEYS[fmt]))}")
    if fmt == "synapse":
        root, split = _path(cfg, "root"), str(cfg.get("split", "train"))
        items = cfg.get("items", "slices" if split == "train" else "volumes")
        list_dir = cfg.get("list_dir")
        if items == "volumes":
            return SynapseVolumeDataset(root, split, list_dir)
        if items != "slices":
            raise UsageError(f"data entry items: must be slices or volumes, got {items!r}")
        return SynapseSliceDataset(root, split, build_transform(cfg), list_dir)
    if fmt == "cataract1k":
        root = _path(cfg, "root")
        task = cfg.get("task", "instrument")
        return Cataract1KDataset(root, str(cfg.get("split", "train")), task, transform=build_transform(cfg),
                                 mask_encoding=cfg.get("mask_encoding"), cases=cfg.get("cases"))
    pairs = pairs_from_config(cfg)
    remap = resolve_remap(cfg.get("remap", "identity"))
    unlabeled = tuple(int(u) for u in cfg.get("unlabeled", ()))
    bad = [u for u in unlabeled if not 1 <= u < SYNAPSE_NUM_CLASSES]
    if bad:
        raise UsageError(f"data entry unlabeled: {bad} are not Synapse organ labels (1..{SYNAPSE_NUM_CLASSES - 1})")
    hu_window = tuple(float(v) for v in cfg.get("hu_window", DEFAULT_HU_WINDOW))
    items = cfg.get("items", "slices")
    if items == "volumes":
        return NiftiVolumeDataset(pairs, remap, unlabeled, hu_window, _fractions(cfg, "slices"))
    if items != "slices":
        raise UsageError(f"data entry items: must be slices or volumes, got {items!r}")
    if cfg.get("slices") is not None:
        raise UsageError("data entry slices: selects an evaluation band (items: volumes); for training use holdout:")
    return NiftiSliceDataset(pairs, remap, unlabeled, build_transform(cfg), _fractions(cfg, "holdout"), hu_window)
