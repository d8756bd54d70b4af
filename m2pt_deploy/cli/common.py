"""What every command shares: the error contract and the argument groups."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from m2pt_deploy.errors import M2ptError

if TYPE_CHECKING:
    from m2pt_deploy.model.checkpoint import Checkpoint

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_CHECK_FAILED",
    "EXIT_OK",
    "add_model_args",
    "add_output_args",
    "HelpFormatter",
    "add_version",
    "load_model_checkpoint",
    "require_onnxruntime",
    "run_main",
    "step",
]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2


def _input_size(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--arch / --input-size: overrides for what the checkpoint says or implies."""
    group = parser.add_argument_group("model (normally read from the checkpoint)")
    group.add_argument("--arch", metavar="NAME",
                       help="timm architecture, e.g. vit_base_patch16_224 (default: inferred from tensor shapes)")
    group.add_argument("--input-size", nargs=3, type=_input_size, metavar=("C", "H", "W"),
                       help="input channels, height and width (default: from the checkpoint; a 1-channel "
                       "512-patch ViT is AudioMAE's 1 1024 128, time x frequency)")
    group.add_argument("--ema", action="store_true",
                       help="use the EMA weights (model_ema) of a training checkpoint instead of model")


def load_model_checkpoint(args: argparse.Namespace, path: str | None = None) -> Checkpoint:
    """``load_checkpoint`` with the model group's overrides, and its notes on stderr."""
    from m2pt_deploy.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path or args.checkpoint, arch=args.arch, ema=args.ema,
                           input_size=tuple(args.input_size) if args.input_size else None)
    for note in ckpt.notes:
        print(f"note: {note}", file=sys.stderr)
    return ckpt


def add_output_args(parser: argparse.ArgumentParser, *, default_help: str) -> None:
    parser.add_argument("-o", "--output", metavar="FILE", help=f"where to write ({default_help})")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")


def require_onnxruntime(why: str) -> None:
    """Refuse before any work when ONNX Runtime (an extra) is missing, naming the extra to install."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        raise M2ptError(f"{why} needs ONNX Runtime, which is not installed: pip install 'm2pt-deploy[cpu]' "
                        "(or 'm2pt-deploy[gpu]' on a CUDA machine)")


def add_version(parser: argparse.ArgumentParser) -> None:
    from m2pt_deploy import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


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


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main``; a user error becomes one line on stderr and exit code 2, no traceback."""
    try:
        return main(argv)
    except M2ptError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """Progress on stderr for a step that may take seconds: ``what ... done (1.2 s)``."""
    print(f"{what} ...", end="", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        print(" failed", file=sys.stderr, flush=True)
        raise
    print(f" done ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)
