"""``kdseg-train convert``: NIfTI/DICOM image + label pairs -> the Synapse layout of TransUNet."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import report_errors

__all__ = ["register"]


@report_errors
def _run(args: argparse.Namespace) -> int:
    from ..data import load_ct_volume
    from ..data.synapse import write_synapse_case

    if len(args.images) != len(args.labels):
        raise ValueError(f"give as many --labels as --images (got {len(args.images)} images, "
                         f"{len(args.labels)} labels)")
    for image, label in zip(args.images, args.labels):
        volume = load_ct_volume(image, label, args.remap)
        names = write_synapse_case(volume, args.root, args.split)
        print(f"{image} -> {len(names)} {'slices' if args.split == 'train' else 'volume'} in {args.root}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="NIfTI/DICOM image + label pairs -> the Synapse layout of TransUNet")
    parser.add_argument("root", type=Path, help="Synapse dataset root to write")
    parser.add_argument("--images", type=Path, nargs="+", required=True)
    parser.add_argument("--labels", type=Path, nargs="+", required=True)
    parser.add_argument("--remap", default="btcv",
                        help="label remap table (btcv, totalsegmentator, dcmqi, identity)")
    parser.add_argument("--split", default="train", help="train (npz slices) or test_vol (h5 volumes)")
    parser.set_defaults(handler=_run)
