"""``python -m m2pt_deploy engine-info sidecar``: the sidecar ``ENGINE.json`` of an engine built
outside m2pt-export (by ``ENGINE.build.sh``, trtexec or polygraphy convert), written on the machine
that built it so that ``m2pt-verify --engine`` accepts the engine."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from m2pt_deploy.cli.common import EXIT_OK, run_main
from m2pt_deploy.metadata import PRECISION_KEY
from m2pt_deploy.vocabulary import API_PATHS, PRECISIONS, parse_batch

__all__ = ["build_parser", "entrypoint", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m2pt-engine-info",  # also: python -m m2pt_deploy engine-info (what build scripts run)
        description="Describe a TensorRT engine built outside m2pt-export (by ENGINE.build.sh, trtexec or "
        "polygraphy convert) in the sidecar ENGINE.json that m2pt-verify --engine checks.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="sidecar",
                                     help="sidecar: write ENGINE.json")
    sidecar = commands.add_parser(
        "sidecar", help="write ENGINE.json; run it on the machine that built the engine",
        description="Write ENGINE.json: this machine's TensorRT version and GPU (so run it where the "
        "engine was built), then the precision, profile, model metadata and hashes of the ONNX.")
    sidecar.add_argument("engine", metavar="ENGINE", help="the engine (a serialized TensorRT plan)")
    sidecar.add_argument("--onnx", required=True, metavar="FILE", help="the ONNX it was built from")
    sidecar.add_argument("--batch", required=True, metavar="MIN:OPT:MAX",
                         help="the batch range of the engine's optimization profile")
    sidecar.add_argument("--api-path", required=True, choices=API_PATHS,
                         help="strong-typing: built with --stronglyTyped / --strongly-typed; builder-flags: "
                         "with --fp16, --bf16, --int8 or --fp8 (TensorRT 10)")
    sidecar.add_argument("--precision", choices=PRECISIONS,
                         help=f"default: the ONNX's {PRECISION_KEY} metadata")
    sidecar.add_argument("--force", action="store_true", help="overwrite an existing sidecar")
    return parser


def _sidecar(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from m2pt_deploy.export.engine_info import write_sidecar

    out = write_sidecar(args.onnx, args.engine, batch=parse_batch(args.batch), api_path=args.api_path,
                        precision=args.precision, force=args.force)
    print(f"wrote {out}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """The exit code, under the commands' error contract (a user error is one line and exit 2):
    ``ENGINE.build.sh`` runs this as its last step and reports its failure by the code."""
    return run_main(_sidecar, argv)


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
