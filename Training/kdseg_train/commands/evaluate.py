"""``kdseg-train evaluate``: Dice and HD95 per case and organ (TransUNet and physical protocols)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_config_arguments, report_errors

__all__ = ["register"]


@report_errors
def _run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..evaluation import evaluate, write_reports
    from ..model_source import resolve_model_source

    config = load_config(args.config, args.overrides or [])
    backend = args.backend or config["evaluate"]["backend"]
    source = resolve_model_source(config, args.model, args.model_id, args.checkpoint)
    output = Path(args.output or config["evaluate"].get("output") or Path(config["output"]) / "evaluation")
    report = evaluate(config, source, backend)
    paths = write_reports(report, output)
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(f"reports: {paths['json']} {paths['markdown']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="per-case, per-organ Dice and HD95 (TransUNet voxel protocol and physical mm)",
        description="Segment the config's evaluation cases (evaluate.cases, else data.val) with a trained model "
                    "and write evaluation.json + evaluation.md.")
    add_config_arguments(parser)
    parser.add_argument("--model", type=Path, default=None,
                        help="a release registry.json or a run folder (default: the config's output folder)")
    parser.add_argument("--model-id", default=None, help="model in the registry (default: its default model)")
    parser.add_argument("--backend", choices=("onnx", "pytorch"), default=None,
                        help="onnx: the Lib's segment_image pipeline (default); pytorch: the run's weights")
    parser.add_argument("--checkpoint", action="store_true",
                        help="evaluate the run's latest checkpoint instead of final/ (e.g. while it trains)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="report folder (default: evaluate.output, else <output>/evaluation)")
    parser.set_defaults(handler=_run)
