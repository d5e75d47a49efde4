"""``kdseg-train``: models (cost report), train, distill, evaluate, export, convert."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

__all__ = ["main"]


def _cmd_models(args: argparse.Namespace) -> int:
    import tempfile

    from .export import export_onnx
    from .models import create_model, list_models
    from .models.cost import measure_cost

    rows = []
    for name in list_models():
        model = create_model(name, img_size=224).eval()
        cost = measure_cost(name, model, 224)
        onnx_mb = None
        if args.onnx_size:
            with tempfile.TemporaryDirectory() as tmp:
                path = export_onnx(model, Path(tmp) / "m.onnx", 224, check=False)
                onnx_mb = path.stat().st_size / 1e6
        rows.append({"name": name, "parameters": cost.parameters, "gmacs_224": round(cost.gmacs, 3),
                     "onnx_mb": None if onnx_mb is None else round(onnx_mb, 1),
                     "description": model.config.description})
    if args.json:
        print(json.dumps({"mac_convention": "1 MAC = 1 multiply-add = 2 FLOPs (torch.utils.flop_counter / 2)",
                          "models": rows}, indent=2))
        return 0
    teacher = rows[0]
    print(f"{'model':<20}{'params':>14}{'x teacher':>11}{'GMACs@224':>11}{'x teacher':>11}{'ONNX MB':>9}")
    for r in rows:
        onnx = "-" if r["onnx_mb"] is None else f"{r['onnx_mb']:.1f}"
        print(f"{r['name']:<20}{r['parameters']:>14,}{r['parameters'] / teacher['parameters']:>11.3f}"
              f"{r['gmacs_224']:>11.2f}{r['gmacs_224'] / teacher['gmacs_224']:>11.3f}{onnx:>9}")
    print("MACs: multiply-adds counted by torch.utils.flop_counter (FLOPs / 2) for one 1x224x224 slice.")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .data import load_ct_volume
    from .data.synapse import write_synapse_case

    if len(args.images) != len(args.labels):
        raise SystemExit("kdseg-train convert: give as many --labels as --images")
    for image, label in zip(args.images, args.labels):
        volume = load_ct_volume(image, label, args.remap)
        names = write_synapse_case(volume, args.root, args.split)
        print(f"{image} -> {len(names)} {'slices' if args.split == 'train' else 'volume'} in {args.root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdseg-train", description="Train, distil, evaluate and export "
                                     "KDSegmentation TransUNet models.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models", help="parameters, MACs at 224x224 and ONNX size of each config")
    models.add_argument("--json", action="store_true")
    models.add_argument("--no-onnx-size", dest="onnx_size", action="store_false",
                        help="skip exporting each model to measure its ONNX size")
    from .commands import evaluate as evaluate_command
    from .commands import export as export_command
    from .commands import train as train_command

    for command in (train_command, evaluate_command, export_command):
        command.register(sub)
    cv = sub.add_parser("convert", help="NIfTI/DICOM image + label pairs -> the Synapse layout of TransUNet")
    cv.add_argument("root", type=Path, help="Synapse dataset root to write")
    cv.add_argument("--images", type=Path, nargs="+", required=True)
    cv.add_argument("--labels", type=Path, nargs="+", required=True)
    cv.add_argument("--remap", default="btcv", help="label remap table (btcv, totalsegmentator, dcmqi, identity)")
    cv.add_argument("--split", default="train", help="train (npz slices) or test_vol (h5 volumes)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    if args.command == "models":
        return _cmd_models(args)
    if getattr(args, "handler", None) is not None:
        return args.handler(args)
    if args.command == "convert":
        return _cmd_convert(args)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
