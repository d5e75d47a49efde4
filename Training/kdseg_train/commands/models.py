"""``kdseg-train models``: parameters, MACs at 224x224 and ONNX size of every registered config."""

from __future__ import annotations

import argparse
import json

from KDSegmentationLib.inference.input_defaults import DEFAULT_INPUT_SIZE

from .common import report_errors

__all__ = ["register"]


@report_errors
def _run(args: argparse.Namespace) -> int:
    from ..models import list_models
    from ..models.cost import MAC_CONVENTION, cost_report

    names = args.models or list_models()
    costs = cost_report(names, img_size=args.img_size, num_classes=args.num_classes,
                        onnx_size=args.onnx_size)
    if args.json:
        print(json.dumps({"img_size": args.img_size, "num_classes": args.num_classes,
                          "mac_convention": MAC_CONVENTION,
                          "models": [c.to_dict() for c in costs]}, indent=2))
        return 0
    reference = next((c for c in costs if c.name == "teacher-r50-b16"), costs[0])
    print(f"{'model':<20}{'params':>14}{'M':>9}{'x ref':>8}{'GMACs':>9}{'x ref':>8}{'ONNX MB':>9}  description")
    for c in costs:
        onnx = "-" if c.onnx_bytes is None else f"{c.onnx_bytes / 1e6:.1f}"
        print(f"{c.name:<20}{c.parameters:>14,}{c.parameters / 1e6:>9.2f}{c.parameters / reference.parameters:>8.3f}"
              f"{c.gmacs:>9.2f}{c.macs / reference.macs:>8.3f}{onnx:>9}  {c.description}")
    print(f"'x ref' = fraction of {reference.name}. MACs for one {args.img_size}x{args.img_size} slice, "
          f"{MAC_CONVENTION}. ONNX = the folded fp32 graph kdseg_train.export.export_onnx writes.")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models", help="parameters, MACs at 224x224 and ONNX size of every registered config",
        description="Cost report of the registered architectures (untrained, freshly built).")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--models", nargs="+", default=None, metavar="NAME",
                        help="only these configs (default: all registered)")
    parser.add_argument("--img-size", type=int, default=DEFAULT_INPUT_SIZE,
                        help="square input size for MACs and ONNX (default: %(default)s)")
    parser.add_argument("--num-classes", type=int, default=9, help="output classes (9 = Synapse)")
    parser.add_argument("--no-onnx-size", dest="onnx_size", action="store_false",
                        help="skip exporting each model to ONNX to measure its file size (faster)")
    parser.set_defaults(handler=_run)
