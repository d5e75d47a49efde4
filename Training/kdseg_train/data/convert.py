"""``kdseg-train convert``: CT image/label pairs -> the Synapse layout of TransUNet.

Each case is read as training reads it (canonical LPS via the Lib, HU window, labels
resampled in physical space and remapped to Synapse order) and written as
``train_npz/<case>_slice<NNN>.npz`` slices or one ``test_vol_h5/<case>.npy.h5`` volume,
with its names added to ``lists_Synapse/<split>.txt``. Files are written under a
temporary name and renamed, so an interrupted run leaves no truncated file.

The CLI (``kdseg_train/cli.py``) wires this module with :func:`add_arguments` and :func:`run`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

from KDSegmentationLib.inference.input_defaults import DEFAULT_HU_WINDOW

from ..errors import UsageError
from .label_maps import REMAP_TABLES

__all__ = ["add_arguments", "run", "main"]

_log = logging.getLogger("kdseg_train")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the converter's options to ``parser`` (a sub-command parser)."""
    parser.add_argument("root", type=Path, help="output folder: the Synapse dataset root to write (created if "
                        "missing), or with --layout the folder for labels/ and datalist.json")
    source = parser.add_argument_group("input (one of)")
    source.add_argument("--images", type=Path, nargs="+",
                        help="image files or DICOM series folders (with --labels, same order)")
    source.add_argument("--labels", type=Path, nargs="+", help="label maps, one per --images entry")
    source.add_argument("--image-dir", type=Path, help="folder of images matched by name with --label-dir")
    source.add_argument("--label-dir", type=Path, help="folder of label maps")
    source.add_argument("--datalist", type=Path, help="MONAI datalist JSON")
    source.add_argument("--datalist-key", default="training", help="section of --datalist (default: training)")
    parser.add_argument("--remap", default="btcv",
                        help=f"label remap table: {', '.join(REMAP_TABLES)} (default: btcv)")
    parser.add_argument("--unlabeled", type=int, nargs="*", default=[],
                        help="Synapse labels the dataset does not annotate (their background is written as 255)")
    parser.add_argument("--split", default="train",
                        help="train (npz slices) or another list name such as test_vol (h5 volumes)")
    parser.add_argument("--hu-window", type=float, nargs=2, default=DEFAULT_HU_WINDOW, metavar=("LOW", "HIGH"),
                        help="HU window clipped and scaled to [0, 1] (default: %(default)s, as TransUNet)")
    parser.add_argument("--skip-empty", action="store_true",
                        help="train split: write only slices with at least one labelled voxel")
    return parser


def _pairs(args: argparse.Namespace):
    from .nifti_pairs import ImageLabelPair, case_name, pairs_from_datalist, pairs_from_folders

    modes = [m for m, given in (("--images/--labels", args.images or args.labels),
                                ("--image-dir/--label-dir", args.image_dir or args.label_dir),
                                ("--datalist", args.datalist)) if given]
    if len(modes) != 1:
        raise UsageError("give exactly one input: --images with --labels, --image-dir with --label-dir, or "
                         f"--datalist (got {', '.join(modes) or 'none'})")
    if args.datalist:
        return pairs_from_datalist(args.datalist, args.datalist_key)
    if args.image_dir or args.label_dir:
        if not (args.image_dir and args.label_dir):
            raise UsageError("--image-dir and --label-dir go together")
        return pairs_from_folders(args.image_dir, args.label_dir)
    if not args.images or not args.labels or len(args.images) != len(args.labels):
        raise UsageError(f"give as many --labels as --images ({len(args.images or [])} images, "
                         f"{len(args.labels or [])} labels)")
    for path in list(args.images) + list(args.labels):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
    return [ImageLabelPair(case_name(i), i, l) for i, l in zip(args.images, args.labels)]


def run(args: argparse.Namespace) -> int:
    """Convert; return 0, or print ``error: ...`` and return a non-zero exit code."""
    from KDSegmentationLib.errors import KDSegError

    from .label_maps import resolve_remap
    from .nifti_pairs import load_volumes
    from .synapse import write_synapse_case

    try:
        table = resolve_remap(args.remap)
        pairs = _pairs(args)
        names = [p.name for p in pairs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise UsageError(f"several inputs have the case name(s) {', '.join(duplicates)}; their files would "
                             "overwrite each other - rename them or use a datalist with name: fields")
        for pair in pairs:
            volume = load_volumes([pair], table, args.unlabeled, args.hu_window)[0]
            written = write_synapse_case(volume, args.root, args.split, skip_empty=args.skip_empty)
            kind = "slices" if args.split == "train" else "volume"
            print(f"{pair.image} -> {len(written)} {kind} in {args.root}")
    except KDSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (UsageError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Run the converter alone (``python -m kdseg_train.data.convert``)."""
    parser = add_arguments(argparse.ArgumentParser(prog="kdseg-train convert", description=__doc__.splitlines()[0]))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
