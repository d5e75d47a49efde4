"""``kdseg-train export``: ONNX + registry entry in a release folder that ``kdseg``/Slicer load directly."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UsageError
from .common import add_config_arguments, report_errors

__all__ = ["register"]


@report_errors
def _run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..release import export_release

    config = load_config(args.config, args.overrides or [])
    ex = config["export"]
    run_dir = Path(args.run or config["output"])
    release = Path(args.release or ex.get("release") or run_dir / "release")
    model_id = args.model_id or ex.get("model_id")
    if not model_id:
        raise UsageError("no model id: set export.model_id in the config or pass --model-id (lowercase, e.g. "
                         "my-student-shsa)")
    evaluation = args.evaluation or ex.get("evaluation")
    if evaluation is None:
        default = Path(config["evaluate"].get("output") or run_dir / "evaluation") / "evaluation.json"
        evaluation = default if default.is_file() else None
        if evaluation is None:
            print(f"note: no evaluation report at {default}; the model card will have no metrics "
                  "(run kdseg-train evaluate first)")
    extra = {}
    if args.metrics_json:
        extra = json.loads(Path(args.metrics_json).read_text(encoding="utf-8"))
        if not isinstance(extra, dict):
            raise UsageError(f"{args.metrics_json} must hold a JSON object")
    if args.compare:
        comparisons = {}
        for item in args.compare:
            name, sep, path = item.partition("=")
            if not sep or not path:
                raise UsageError(f"--compare expects NAME=EVALUATION_JSON, got {item!r}")
            comparisons[name] = json.loads(Path(path).read_text(encoding="utf-8"))["summary"]
        extra["comparisons"] = comparisons
    from ..release import datalist_licences

    licences = list(args.data_licence or [])
    if args.url and not licences and not datalist_licences(config):
        raise UsageError("publishing (--url) needs the licence of the training data: add --data-licence, e.g. "
                         "--data-licence 'BTCV: Synapse syn3193805 conditions of use' (converted datalists state "
                         "theirs automatically)")
    registry = export_release(
        run_dir, release, model_id, args.title or ex.get("title") or model_id, config,
        evaluation_path=evaluation, from_checkpoint=args.checkpoint, version=str(ex["version"]),
        description=ex.get("description"), intended_use=ex.get("intended_use") or "",
        extra_metrics=extra, default=bool(ex["default"]), urls=tuple(args.url or ()),
        data_licences=licences, weights_licence=args.weights_licence)
    print(f"release written: {registry}")
    print(f"model card: {registry.parent / (model_id + '.md')}; checksums: {registry.parent / 'SHA256SUMS'}")
    if args.url:
        from KDSegmentationLib.weights.model_registry import load_registry

        onnx = registry.parent / load_registry(registry).get(model_id).file
        entry = registry.parent / f"{model_id}.registry-entry.json"
        print(f"publish: upload {onnx} to {args.url[0]}, then add {entry} to the models of "
              "Resources/Models/registry.json (or hand users the release's registry.json)")
    print(f"try it: kdseg --registry {registry} segment CT.nii.gz -o segmentation.nii.gz")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="write the ONNX model and its registry entry into a release folder the Lib loads",
        description="Export the run of a config (final/ weights) to <release>/model.onnx + registry.json with "
                    "checksums, labels (SNOMED CT), input spec, evaluation metrics and training record.")
    add_config_arguments(parser)
    parser.add_argument("--run", type=Path, default=None, help="run folder (default: the config's output)")
    parser.add_argument("--release", type=Path, default=None,
                        help="release folder (default: export.release, else <output>/release)")
    parser.add_argument("--model-id", default=None, help="registry id (default: export.model_id)")
    parser.add_argument("--title", default=None, help="human-readable title (default: export.title)")
    parser.add_argument("--evaluation", type=Path, default=None,
                        help="evaluation.json for the card's metrics (default: <output>/evaluation/evaluation.json)")
    parser.add_argument("--compare", nargs="+", default=None, metavar="NAME=JSON",
                        help="evaluation.json of other models summarised under metrics.comparisons")
    parser.add_argument("--metrics-json", type=Path, default=None, help="extra measured metrics (a JSON object)")
    parser.add_argument("--url", nargs="+", default=None, metavar="URL",
                        help="https:// address(es) users will download the ONNX file from; writes "
                             "<id>.registry-entry.json for Resources/Models/registry.json")
    parser.add_argument("--data-licence", action="append", default=None, metavar="TEXT",
                        help="licence of the training data for the model card (repeatable; required with --url "
                             "unless the data comes from converted datalists)")
    parser.add_argument("--weights-licence", default="Apache-2.0", help="licence of the weights (default Apache-2.0)")
    parser.add_argument("--checkpoint", action="store_true",
                        help="export the latest checkpoint of an unfinished run (the card says so)")
    parser.set_defaults(handler=_run)
