"""The ``kdseg`` command: segment CT files, list and download models.

Exit codes are those of :mod:`KDSegmentationLib.errors` (documented in README.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

from . import __version__
from .errors import EXIT_CANCELLED, EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, KDSegError, OutputError
from .progress import ProgressEvent, Stage

__all__ = ["main", "build_parser"]

_log = logging.getLogger("KDSegmentationLib")


class _TqdmProgress:
    """Shows ProgressEvents as one tqdm bar per stage on stderr."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._bar = None
        self._stage: Optional[Stage] = None

    def __call__(self, event: ProgressEvent) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if event.stage != self._stage:
            self.close()
            self._stage = event.stage
            if event.total:
                unit = "B" if event.stage == Stage.DOWNLOADING else "slice"
                self._bar = tqdm(total=event.total, desc=event.stage.label(), unit=unit,
                                 unit_scale=event.stage == Stage.DOWNLOADING, file=sys.stderr, leave=False)
        if self._bar is not None and event.total:
            self._bar.n = event.current
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdseg", description="Abdominal organ segmentation of CT volumes "
                                     "with a distilled lightweight TransUNet (ONNX Runtime).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--registry", type=Path, default=None,
                        help="model registry JSON (default: the bundled Resources/Models/registry.json)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment a CT volume")
    source = seg.add_mutually_exclusive_group(required=True)
    source.add_argument("input", nargs="?", type=Path,
                        help="CT file (.nii/.nii.gz/.nrrd/.mha) or DICOM series folder")
    source.add_argument("--sample", action="store_true", help="segment the bundled sample CT")
    seg.add_argument("-o", "--output", type=Path, required=True, help="label map to write (.nii.gz, .nrrd, ...)")
    seg.add_argument("--model", default=None, help="model id (default: the registry's default; see `kdseg models`)")
    seg.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    seg.add_argument("--structures", default=None, help="comma-separated structures to keep, e.g. liver,spleen")
    seg.add_argument("--batch-size", type=int, default=8, help="slices per inference call (default 8)")
    seg.add_argument("--threads", type=int, default=None, help="CPU threads for inference")
    seg.add_argument("--no-postprocess", action="store_true",
                     help="skip largest-component selection and hole filling")
    seg.add_argument("--volumes-json", type=Path, default=None, help="write per-organ volumes (mL) here")
    seg.add_argument("--series", default=None, help="DICOM series instance UID when a folder holds several")
    seg.add_argument("--no-progress", action="store_true", help="no progress bar")

    sub.add_parser("models", help="list registered models and whether each is available offline")
    dl = sub.add_parser("download", help="download and verify a model's weights into the cache")
    dl.add_argument("model_id")
    return parser


def _write_json_atomic(data: object, path: Path) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"Cannot write {path}: {exc.strerror}.", "Choose a writable path.") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _cmd_segment(args: argparse.Namespace) -> int:
    from .image_io import check_output_path
    from .pipeline import SegmentationOptions, Segmenter, segment_file
    from .resources import sample_ct_path

    if args.batch_size < 1:
        raise SystemExit(f"kdseg segment: error: --batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"kdseg segment: error: --threads must be >= 1, got {args.threads}")
    source = sample_ct_path() if args.sample else args.input
    check_output_path(args.output)
    if args.volumes_json is not None:
        parent = args.volumes_json.parent if str(args.volumes_json.parent) else Path(".")
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise OutputError(f"Cannot write volumes JSON to {args.volumes_json}: folder {parent} "
                              "is missing or not writable.", "Choose a writable path.")
    structures = [s.strip() for s in args.structures.split(",") if s.strip()] if args.structures else None
    progress = _TqdmProgress(enabled=not args.no_progress and sys.stderr.isatty())
    try:
        segmenter = Segmenter.from_registry(args.model, device=args.device, threads=args.threads,
                                            registry=args.registry, progress=progress)
        options = SegmentationOptions(structures=structures, postprocess=not args.no_postprocess,
                                      batch_size=args.batch_size)
        result = segment_file(source, args.output, segmenter, options, series_uid=args.series, progress=progress)
    finally:
        progress.close()
    print(f"Segmented {source} with {result.model_id} on {result.device.upper()} -> {args.output}")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print("Volumes (mL):")
    for name, volume in result.volumes_ml.items():
        print(f"  {name:<14} {volume:10.1f}")
    total = sum(result.timings.values())
    print("Timing (s): " + ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items()) + f", total {total:.2f}")
    if args.volumes_json is not None:
        _write_json_atomic({"model": result.model_id, "input": str(source), "output": str(args.output),
                            "volumes_ml": result.volumes_ml, "timings_s": result.timings}, args.volumes_json)
    return EXIT_OK


def _cmd_models(args: argparse.Namespace) -> int:
    from .registry import load_registry
    from .weights import is_available_offline

    registry = load_registry(args.registry)
    if not registry.models:
        print(f"No models in {registry.path}. Train and export one with `kdseg-train` "
              "(see Training/README.md).")
        return EXIT_OK
    for card in registry.models.values():
        offline = "available offline" if is_available_offline(card, registry.directory) else "needs download"
        default = " (default)" if card.id == (registry.default_model_id or registry.ids()[0]) else ""
        print(f"{card.id}{default}: {card.title} v{card.version} - {offline}")
        print(f"    {card.description}")
        print(f"    structures: {', '.join(l.name for l in card.foreground_labels())}")
        print(f"    intended use: {card.intended_use}")
    return EXIT_OK


def _cmd_download(args: argparse.Namespace) -> int:
    from .registry import load_registry
    from .weights import resolve_weights

    registry = load_registry(args.registry)
    card = registry.get(args.model_id)
    progress = _TqdmProgress(enabled=sys.stderr.isatty())
    try:
        path = resolve_weights(card, registry.directory, progress=progress)
    finally:
        progress.close()
    print(f"{card.id}: verified weights at {path}")
    return EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    commands = {"segment": _cmd_segment, "models": _cmd_models, "download": _cmd_download}
    try:
        return commands[args.command](args)
    except KDSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; no output was written.", file=sys.stderr)
        return EXIT_CANCELLED
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return EXIT_USAGE
        raise
    except Exception as exc:  # a bug: say so plainly instead of a bare traceback
        _log.debug("unexpected error", exc_info=True)
        print(f"error: unexpected {type(exc).__name__}: {exc} (please report this; rerun with -v for "
              "details)", file=sys.stderr)
        if args.verbose:
            raise
        return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
