"""``kdseg-train convert``: public datasets as downloaded (``--layout``), or image + label pairs, for training.

    kdseg-train convert OUT --layout btcv --source RawData/Training [--synapse]
    kdseg-train convert OUT --layout totalsegmentator --source Totalsegmentator_dataset_v201
    kdseg-train convert SYNAPSE_ROOT --images a.nii.gz ... --labels a_seg.nii.gz ... --remap btcv

With ``--layout`` the labels are remapped to the 8 organs into ``OUT/labels/`` and
``OUT/datalist.json`` lists every case with the organs it labels (see
:mod:`kdseg_train.data.layout_convert`); without it, pairs are written in TransUNet's
Synapse layout (:mod:`kdseg_train.data.convert`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    if args.layout is None:
        if args.source is not None or args.splits is not None or args.synapse or args.overwrite:
            print("error: --source, --splits, --synapse and --overwrite go with --layout", file=sys.stderr)
            return 2
        from ..data.convert import run

        return run(args)
    if args.images or args.labels or args.image_dir or args.label_dir or args.datalist:
        print("error: --layout reads a whole dataset folder (--source); leave out --images/--labels/--image-dir/"
              "--label-dir/--datalist", file=sys.stderr)
        return 2
    if args.source is None:
        print(f"error: --layout {args.layout} needs --source, the dataset folder as downloaded", file=sys.stderr)
        return 2
    from KDSegmentationLib.errors import KDSegError

    from ..data.layout_convert import convert_layout
    from ..errors import UsageError

    try:
        datalist = convert_layout(args.layout, args.source, args.root, args.splits, args.overwrite, args.synapse,
                                  report=print)
    except KDSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (UsageError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"datalist: {datalist}")
    print(f"train on it with a data entry {{datalist: {datalist}, split: training}} (Training/README.md)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..data.convert import add_arguments
    from ..data.layouts import LAYOUTS

    parser = subparsers.add_parser(
        "convert", help="public datasets as downloaded (--layout) or image + label pairs -> training data",
        description=__doc__.splitlines()[0])
    add_arguments(parser)
    layout = parser.add_argument_group("public dataset as downloaded")
    layout.add_argument("--layout", choices=sorted(LAYOUTS), default=None,
                        help="read --source as this dataset; writes OUT/labels/ and OUT/datalist.json")
    layout.add_argument("--source", type=Path, default=None, help="the dataset folder as downloaded")
    layout.add_argument("--splits", nargs="+", default=None, choices=("training", "validation", "test"),
                        help="convert only these official splits (default: all)")
    layout.add_argument("--synapse", action="store_true",
                        help="also write TransUNet's Synapse layout (train_npz + test_vol_h5) into OUT")
    layout.add_argument("--overwrite", action="store_true", help="redo cases whose label file exists")
    parser.set_defaults(handler=_run)
