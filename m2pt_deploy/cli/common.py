"""What every command shares: the error contract and the argument groups."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from m2pt_deploy.errors import M2ptError, first_line
from m2pt_deploy.families import family_names, family_options
from m2pt_deploy.fileio import os_error_reason
from m2pt_deploy.request import ModelRequest

if TYPE_CHECKING:
    from m2pt_deploy.model.checkpoint import Checkpoint
    from m2pt_deploy.pipelines.export import ExportResult

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_CHECK_FAILED",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "add_model_args",
    "add_output_args",
    "HelpFormatter",
    "add_version",
    "finish",
    "load_model_checkpoint",
    "model_options",
    "model_request",
    "run_main",
]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
#: Not the user's fault: a bug in this package (``--verbose`` shows the traceback).
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def _input_size(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def family_flags() -> list[tuple[str, str]]:
    """``(option name, help)`` for every model setting a registered family declares: one flag per
    name, whatever number of families take it (each refuses those it does not). Importing the
    families costs no torch, so --help stays instant."""
    out = []
    for name, declared in family_options().items():
        texts = {option.help for _, option in declared}
        if len(texts) == 1 and len(declared) == len(family_names()):
            text = texts.pop()  # every family's setting
        else:
            text = "; ".join(f"{family.title}: {option.help}" for family, option in declared)
        defaults = {option.default for _, option in declared} - {None}
        if len(defaults) == 1 and "default" not in text:
            text += f" (default {defaults.pop()})"
        out.append((name, text))
    return out


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--family / --arch / --input-size / family settings: overrides for what the checkpoint says or implies."""
    group = parser.add_argument_group("model (normally read from the checkpoint)")
    group.add_argument("--family", metavar="NAME",
                       help=f"model family: {', '.join(sorted(family_names()))}, or one registered from Python "
                       "(default: recognised from the checkpoint's keys)")
    group.add_argument("--arch", metavar="NAME",
                       help="timm architecture, e.g. vit_base_patch16_224 (default: inferred from tensor shapes)")
    group.add_argument("--input-size", nargs="+", type=_input_size, metavar="N",
                       help="one input's shape: C H W for a ViT (a 1-channel 512-patch ViT is AudioMAE's "
                       "1 1024 128, time x frequency), C T H W for VideoMAE (default 3 16 224 224) "
                       "(default: from the checkpoint)")
    for name, text in family_flags():
        group.add_argument("--" + name.replace("_", "-"), type=_input_size, metavar="N", help=text)
    group.add_argument("--ema", action="store_true",
                       help="use the EMA weights (model_ema) of a training checkpoint instead of model")


def model_request(args: argparse.Namespace) -> ModelRequest:
    """The model group as a :class:`ModelRequest` (validated)."""
    return ModelRequest(
        family=args.family, arch=args.arch, input_size=tuple(args.input_size) if args.input_size else None,
        options={name: getattr(args, name) for name in family_options() if getattr(args, name, None) is not None},
        ema=args.ema).validate()


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """``load_checkpoint``'s keyword arguments from the model group."""
    return model_request(args).load_kwargs()


def load_model_checkpoint(args: argparse.Namespace, path: str | None = None) -> Checkpoint:
    """``load_checkpoint`` with the model group's overrides, and its notes on stderr."""
    from m2pt_deploy.pipelines.export import load_for_export

    return load_for_export(path or args.checkpoint, model_request(args))


def finish(result: ExportResult) -> int:
    """The verdict's exit code: 0 passed (or not verified), 1 a check failed (the artifact kept)."""
    if result.passed:
        return EXIT_OK
    kept = f"; the export is kept at {result.kept} for inspection" if result.kept else ""
    print(f"verification FAILED{kept}", file=sys.stderr)
    return EXIT_CHECK_FAILED


def add_output_args(parser: argparse.ArgumentParser, *, default_help: str) -> None:
    parser.add_argument("-o", "--output", metavar="FILE", help=f"where to write ({default_help})")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")


def add_version(parser: argparse.ArgumentParser) -> None:
    """--version, and --verbose (which every command takes: see :func:`run_main`)."""
    from m2pt_deploy import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="let libraries' warnings and log lines through, and show a traceback for an "
                        "internal error")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples kept as written, and every option's default shown (where it has one and its
    help does not already say it)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        # None / False / [] mean "off" or "from elsewhere", which the help says in words; compared
        # by identity, since 0 == False and a default of 0 must still show.
        off = action.default is None or action.default is False or action.default is argparse.SUPPRESS \
            or (isinstance(action.default, list) and not action.default)
        if off or "default" in text:
            return action.help
        return super()._get_help_string(action)


class Terminated(BaseException):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that every ``finally`` cleans up."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def _signals() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C; a file-size limit (SIGXFSZ, which would kill the process
    mid-write) becomes an OSError (EFBIG) that the write reports and cleans up after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler)
                for sig, handler in ((signal.SIGTERM, _raise_terminated), (signal.SIGXFSZ, signal.SIG_IGN))}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _quiet_libraries(verbose: bool) -> Iterator[None]:
    """Libraries' warnings and log lines (torch, onnxscript, protobuf, gRPC's C core) stay off the
    terminal unless --verbose: what a user reads is this package's lines."""
    if verbose:
        yield
        return
    # gRPC's C core reads these once, when it loads; setdefault leaves a user's choice alone.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    os.environ.setdefault("GRPC_TRACE", "")
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _os_error(e: OSError) -> str:
    """An OSError as one line naming the file."""
    reason = os_error_reason(e)
    return f"{e.filename}: {reason}" if e.filename else reason


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main`` under the error contract: a user error (or an OS error: a full disk, a read-only
    folder) is one line on stderr and exit 2; Ctrl-C exits 130 and SIGTERM 143, having removed
    what was being written; anything else is one line and exit 70 (``--verbose``: the traceback)."""
    verbose = "--verbose" in (sys.argv[1:] if argv is None else argv)
    with _signals(), _quiet_libraries(verbose):
        try:
            return main(argv)
        except M2ptError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            print("interrupted; nothing was left half-written", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Terminated:
            print("terminated; nothing was left half-written", file=sys.stderr)
            return EXIT_TERMINATED
        except OSError as e:
            print(f"error: {_os_error(e)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except MemoryError:
            print("error: out of memory", file=sys.stderr)
            return EXIT_BAD_INPUT
        except Exception as e:
            if verbose:
                raise
            print(f"internal error: {type(e).__name__}: {first_line(e)[:300]} (a bug in m2pt-deploy; "
                  "--verbose shows the traceback)", file=sys.stderr)
            return EXIT_INTERNAL
