"""The ``kdseg`` command: segment CT files, list and download models.

Exit codes are those of :mod:`KDSegmentationLib.errors` (documented in README.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional

from . import __version__
from .atomic_files import write_text_atomic
from .errors import EXIT_CANCELLED, EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, KDSegError, OutputError
from .progress import CancelToken, ProgressEvent, Stage

__all__ = ["main", "build_parser"]

_UNITS = {Stage.DOWNLOADING: "B", Stage.INFERRING: "slice", Stage.POSTPROCESSING: "organ"}


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
                unit = _UNITS.get(event.stage, "step")
                self._bar = tqdm(total=event.total, desc=event.stage.label(), unit=unit,
                                 unit_scale=event.stage == Stage.DOWNLOADING, file=sys.stderr, leave=False)
        if self._bar is not None and event.total:
            self._bar.n = event.current
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _timeout_seconds(text: str) -> float:
    from .weights.download_timeouts import checked_read_timeout

    try:
        return checked_read_timeout(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _structure_list(text: str) -> List[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated structure names, e.g. liver,spleen")
    return names


_EPILOG = """exit codes: 0 success, 1 unexpected error (a bug), 2 usage error, 3 bad input image,
4 unknown model/structure or bad registry, 5 weights missing/download/checksum failure,
6 requested device unavailable, 7 output cannot be written, 130 cancelled (Ctrl-C)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdseg", description="Abdominal organ segmentation of CT volumes "
                                     "with a distilled lightweight TransUNet (ONNX Runtime).", epilog=_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--registry", type=Path, default=None,
                        help="model registry JSON (default: the bundled Resources/Models/registry.json)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (input geometry, device choice)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    seg = sub.add_parser("segment", help="segment a CT volume", epilog=_EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    source = seg.add_mutually_exclusive_group(required=True)
    source.add_argument("input", nargs="?", type=Path,
                        help="CT file (.nii/.nii.gz/.nrrd/.mha) or DICOM series folder")
    source.add_argument("--sample", action="store_true", help="segment the bundled sample CT")
    seg.add_argument("-o", "--output", type=Path, required=True,
                     help="label map to write (.nii.gz, .nii, .nrrd or .mha)")
    seg.add_argument("--model", default=None, help="model id (default: the registry's default; see `kdseg models`)")
    seg.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="inference device; auto uses CUDA only if a test inference on it works (default auto)")
    seg.add_argument("--structures", type=_structure_list, default=None,
                     help="comma-separated structures to keep, e.g. liver,spleen (default: all)")
    seg.add_argument("--batch-size", type=_positive_int, default=8, help="slices per inference call (default 8)")
    seg.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for inference")
    seg.add_argument("--thread-spinning", choices=("auto", "on", "off"), default="auto",
                     help="CPU inference threads busy-wait during a run instead of sleeping: auto = only when no "
                          "other work keeps the cores busy, measured at start (default auto)")
    seg.add_argument("--no-postprocess", action="store_true",
                     help="skip largest-component selection and hole filling")
    seg.add_argument("--volumes-json", type=Path, default=None,
                     help="also write per-structure volumes (mL) and timings to this JSON file")
    seg.add_argument("--series", default=None, metavar="UID",
                     help="DICOM series instance UID when the input folder holds several series")
    seg.add_argument("--no-progress", action="store_true", help="no progress bar")
    seg.add_argument("--timeout", type=_timeout_seconds, default=None, metavar="SECONDS",
                     help="seconds to wait for data while downloading weights before retrying (default 30)")

    sub.add_parser("models", help="list registered models and whether each is available offline")
    dl = sub.add_parser("download", help="download and verify a model's weights into the cache")
    dl.add_argument("model_id")
    dl.add_argument("--timeout", type=_timeout_seconds, default=None, metavar="SECONDS",
                    help="seconds to wait for data before retrying (default 30)")
    return parser


def _write_json_atomic(data: object, path: Path) -> None:
    try:
        write_text_atomic(path, json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        raise OutputError(f"Cannot write {path}: {exc.strerror}.",
                          "Free disk space (or quota) or choose a writable path.") from None


def _check_json_path(path: Path) -> None:
    parent = path.parent
    if path.is_dir():
        raise OutputError(f"--volumes-json {path} is a folder.", "Give a file name such as volumes.json.")
    if not parent.is_dir():
        raise OutputError(f"Folder {parent} for --volumes-json does not exist.", "Create it or choose another path.")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"Folder {parent} for --volumes-json is not writable.", "Choose a writable path.")


class _BackgroundLoad:
    """Runs ``load(cancel_token)`` on a thread; :meth:`result` waits and returns or re-raises."""

    def __init__(self, load: Callable[[CancelToken], object]) -> None:
        self._cancel = CancelToken()
        self._outcome: dict = {}
        self._thread = threading.Thread(target=self._run, args=(load,), name="kdseg-model-load", daemon=True)
        self._thread.start()

    def _run(self, load: Callable[[CancelToken], object]) -> None:
        try:
            self._outcome["value"] = load(self._cancel)
        except BaseException as exc:  # handed to the main thread by result()
            self._outcome["error"] = exc

    def result(self):
        self._thread.join()
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["value"]

    def close(self) -> None:
        """Cancel a download still running and wait for the thread: a thread left inside ONNX Runtime's
        C++ code when the interpreter exits aborts the process (exit -6 instead of the error's code)."""
        self._cancel.cancel()
        self._thread.join()


class _CtrlCHeldOff:
    """Ignores Ctrl-C from :meth:`hold` until :meth:`release` (main thread only).

    Held while the result is committed (label map, volumes JSON, summary: well under a
    second): an interrupt there would leave a complete output behind a message saying
    that none was written.
    """

    def __init__(self) -> None:
        self._previous = None

    def hold(self) -> None:
        if self._previous is None and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, signal.SIG_IGN)

    def release(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def _cmd_segment(args: argparse.Namespace) -> int:
    committing = _CtrlCHeldOff()
    try:
        return _segment(args, committing)
    finally:
        committing.release()


def _segment(args: argparse.Namespace, committing: _CtrlCHeldOff) -> int:
    from .imaging.image_files import check_output_path, read_image, write_image_atomic
    from .imaging.input_geometry import check_image_geometry, check_output_can_store
    from .imaging.intensity_checks import reject_unusable_values
    from .imaging.path_guards import check_distinct_outputs
    from .inference.thread_limits import bounded_threads
    from .inference.pipeline import SegmentationOptions, Segmenter, segment_image, structure_label_values
    from .weights.model_registry import load_registry
    from .resources import sample_ct_path

    import SimpleITK as sitk

    source = sample_ct_path() if args.sample else args.input
    # Everything that can be checked cheaply is checked before reading the volume,
    # downloading weights or loading the model.
    check_output_path(args.output)
    outputs = [("-o", args.output)]
    if args.volumes_json is not None:
        _check_json_path(args.volumes_json)
        outputs.append(("--volumes-json", args.volumes_json))
    check_distinct_outputs([("the input file", source)], outputs)
    threads, threads_warning = bounded_threads(args.threads)
    if threads_warning:
        logging.getLogger("KDSegmentationLib").warning(threads_warning)
    registry = load_registry(args.registry)
    card = registry.get(args.model)
    structure_label_values(card, args.structures)

    progress = _TqdmProgress(enabled=not args.no_progress and sys.stderr.isatty())
    timings = {}
    # The model is verified and loaded on a second thread while the volume is read: reading
    # is mostly one core decompressing, so the other core is free for it.
    loading = _BackgroundLoad(lambda cancel: Segmenter.from_registry(
        card.id, device=args.device, threads=threads, registry=registry, progress=progress, cancel=cancel,
        read_timeout=args.timeout, spinning=args.thread_spinning))
    try:
        start = time.perf_counter()
        image = read_image(source, args.series)
        reject_unusable_values(sitk.GetArrayViewFromImage(image), "input")
        check_image_geometry(image, str(source))  # refuse before inference; warnings come with the result
        check_output_can_store(image, args.output)
        timings["read"] = time.perf_counter() - start

        start = time.perf_counter()
        segmenter = loading.result()
        timings["load"] = time.perf_counter() - start  # what was left of loading once the volume was read

        options = SegmentationOptions(structures=args.structures, postprocess=not args.no_postprocess,
                                      batch_size=args.batch_size)
        result = segment_image(image, segmenter, options, progress=progress)
        timings.update(result.timings)
        del image

        committing.hold()
        start = time.perf_counter()
        write_image_atomic(result.labels, args.output)
        timings["write"] = time.perf_counter() - start
    finally:
        loading.close()  # after a read error or Ctrl-C: stop a download, let ONNX Runtime finish loading
        progress.close()
    if args.volumes_json is not None:
        _write_json_atomic({"model": result.model_id, "device": result.device, "input": str(source),
                            "output": str(args.output), "volumes_ml": result.volumes_ml, "timings_s": timings,
                            # timings_s partitions the wall time; stage_busy_s overlaps when network_overlapped.
                            "stage_busy_s": result.busy, "network_overlapped": result.overlapped,
                            "thread_spinning": {"spinning": getattr(segmenter.engine, "spinning", None),
                                                "reason": getattr(segmenter.engine, "spinning_reason", None)},
                            "warnings": ([threads_warning] if threads_warning else []) + result.warnings},
                           args.volumes_json)
    print(f"Segmented {source} with {result.model_id} on {result.device.upper()} -> {args.output}")
    print("Volumes (mL):")
    for name, volume in result.volumes_ml.items():
        print(f"  {name:<14} {volume:10.1f}")
    print("Timing (s): " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items())
          + f", total {sum(timings.values()):.2f}")
    return EXIT_OK


def _cmd_models(args: argparse.Namespace) -> int:
    from .weights.model_registry import load_registry
    from .weights.resolution import is_available_offline

    registry = load_registry(args.registry)
    if not registry.models:
        print(f"No models in {registry.path}. Train and export one with `kdseg-train` "
              "(see Training/README.md) and pass its registry with --registry.")
        return EXIT_OK
    print(f"Models in {registry.path}:")
    default_id = registry.default_model_id or registry.ids()[0]
    # The default first (as in the Slicer module's list), the others in registry order.
    for card in sorted(registry.models.values(), key=lambda card: card.id != default_id):
        if is_available_offline(card, registry.directory):
            offline = "available offline"
        else:
            offline = f"needs download ({card.size_bytes / 1e6:.1f} MB: kdseg download {card.id})"
        default = " (default)" if card.id == default_id else ""
        print(f"{card.id}{default}: {card.title} v{card.version} - {offline}")
        print(f"    {card.description}")
        print(f"    structures: {', '.join(l.name for l in card.foreground_labels())}")
        print(f"    intended use: {card.intended_use}")
    return EXIT_OK


def _cmd_download(args: argparse.Namespace) -> int:
    from .weights.model_registry import load_registry
    from .weights.resolution import resolve_weights

    registry = load_registry(args.registry)
    card = registry.get(args.model_id)
    progress = _TqdmProgress(enabled=sys.stderr.isatty())
    try:
        path = resolve_weights(card, registry.directory, progress=progress, read_timeout=args.timeout)
    finally:
        progress.close()
    print(f"{card.id}: verified weights at {path}")
    return EXIT_OK


class _StderrHandler(logging.Handler):
    """Writes "warning: ..." lines to the current ``sys.stderr`` (which tests may swap)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)
        except Exception:  # logging must never break the command
            self.handleError(record)


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``kdseg`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help/--version (0) or a usage error (2, message already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logger = logging.getLogger("KDSegmentationLib")
    handler = _StderrHandler(logging.INFO if args.verbose else logging.WARNING)
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(handler.level)
    commands = {"segment": _cmd_segment, "models": _cmd_models, "download": _cmd_download}
    try:
        return commands[args.command](args)
    except KDSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        partial = getattr(exc, "partial", None)  # weights.download.DownloadInterrupted
        kept = f" the partial download {partial} is kept and the next run resumes it;" if partial else ""
        print(f"error: interrupted (Ctrl-C);{kept} no output was written.", file=sys.stderr)
        return EXIT_CANCELLED
    except MemoryError:
        print("error: out of memory. Close other programs, use a smaller --batch-size, or crop the volume.",
              file=sys.stderr)
        return EXIT_UNEXPECTED
    except Exception as exc:  # a bug: say so plainly instead of a bare traceback
        if args.verbose:
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (a bug; please report it with the output of "
              "the same command run with -v)", file=sys.stderr)
        return EXIT_UNEXPECTED
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


def run() -> None:
    """Console entry point of ``kdseg``: :func:`main`, then an exit that a late Ctrl-C cannot crash.

    Ctrl-C abandons a read or a model load on a daemon thread (``interruptible_call``,
    the model-load thread) that may still be inside ITK or ONNX Runtime; finalising the
    interpreter under such a thread, or after a native module's import was interrupted,
    crashes the process (SIGSEGV/SIGABRT) instead of exiting with 130, so a cancelled run
    leaves without finalisation, after flushing.
    """
    try:
        code = main()
    except KeyboardInterrupt:  # Ctrl-C between main()'s own handlers
        print("error: interrupted (Ctrl-C); no output was written.", file=sys.stderr)
        code = EXIT_CANCELLED
    # The command has finished (or was cancelled): a Ctrl-C from now on must not change its exit code.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdout.flush()
    sys.stderr.flush()
    if code == EXIT_CANCELLED or any(
            thread.is_alive() for thread in threading.enumerate() if thread is not threading.main_thread()):
        # Interrupted imports of native modules or ITK/ONNX Runtime threads of their own make
        # finalisation unsafe too; everything the command writes is already closed (atomic writes).
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
