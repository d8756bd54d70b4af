"""m2pt-verify: prove an ONNX export equivalent to its checkpoint, at vanilla cost."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from m2pt_deploy.cli.common import (
    HelpFormatter,
    add_model_args,
    add_version,
    finish,
    load_model_checkpoint,
    model_options,
    model_request,
    run_main,
)
from m2pt_deploy.errors import M2ptError, first_line
from m2pt_deploy.fileio import check_output_path
from m2pt_deploy.filekind import file_kind, require_checkpoint, require_onnx

__all__ = ["build_parser", "entrypoint", "main"]

_EPILOG = """\
checks:
  merge      unmerged vs merged model in torch: bit-identical (within 1e-5 when a
             linear-probe BatchNorm head was folded)
  runtime    merged torch model vs ONNX Runtime: fp32 max abs error <= 1e-4 and identical
             top-1; fp16 cosine >= 0.999 and top-1 agreement >= 99%
  structure  the graph vs a vanilla timm ViT of the same architecture exported the same
             way: op types, node count, initializer names/shapes/dtypes, inputs/outputs

exit codes: 0 all checks passed, 1 a check failed, 2 bad input
"""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m2pt-verify",
        description=__doc__,
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    add_version(parser)
    parser.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="the training checkpoint the ONNX file came from"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--onnx", metavar="FILE", help="the exported model to verify")
    source.add_argument(
        "--engine",
        metavar="FILE",
        help="a TensorRT engine from m2pt-export --format trt (needs TensorRT and a GPU)",
    )
    add_model_args(parser)
    group = parser.add_argument_group("comparison")
    group.add_argument(
        "--inputs",
        metavar="NPY",
        help="normalised images [N, C, H, W] in a .npy file (default: seeded random inputs)",
    )
    group.add_argument(
        "--batch-size",
        type=_positive,
        default=None,
        metavar="N",
        help="seeded inputs, and rows per inference for a dynamic-batch model (default: 4, one clip for video "
             "models; an engine's profile OPT)",
    )
    group.add_argument(
        "--seed", type=int, default=0, help="seed of the generated inputs (default: 0)"
    )
    engine = parser.add_argument_group("TensorRT (--engine)")
    engine.add_argument(
        "--no-latency",
        action="store_true",
        help="skip building a vanilla-ViT engine and timing the merged engine against it",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--report", metavar="FILE", help="also write the report as JSON")
    out.add_argument("--force", action="store_true", help="overwrite an existing report")
    return parser


def _load_inputs(path: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise M2ptError("no such file", p)
    try:
        # Never unpickle: an object array in a .npy file would run code.
        return np.load(p, allow_pickle=False)
    except ValueError as e:
        raise M2ptError(f"not a plain numeric .npy array ({first_line(e)})", p) from e
    except (OSError, EOFError) as e:
        raise M2ptError(f"not a readable .npy file ({e})", p) from e


def _check_request(args: argparse.Namespace) -> None:
    """Files recognised and the report's folder probed before torch or onnx is imported."""
    model_request(args)
    require_checkpoint(args.checkpoint)
    if args.onnx:
        require_onnx(args.onnx)
        if args.no_latency:
            raise M2ptError("--no-latency applies to --engine (TensorRT), not --onnx")
    elif file_kind(args.engine).kind == "missing":
        raise M2ptError("no such file", args.engine)
    kind = file_kind(args.inputs) if args.inputs else None
    if kind is not None and kind.kind != "npy":
        raise M2ptError("no such file" if kind.kind == "missing" else f"is {kind.what}, not a .npy array", args.inputs)
    if args.force and not args.report:
        raise M2ptError("--force overwrites the report; there is no --report")
    if args.report:
        check_output_path(args.report, force=args.force)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_request(args)

    if args.engine:
        from m2pt_deploy.pipelines.verify_engine import verify_engine_file

        return finish(verify_engine_file(
            args.checkpoint, args.engine, model=model_options(args),
            inputs=_load_inputs(args.inputs) if args.inputs else None, batch_size=args.batch_size,
            latency=not args.no_latency, report=args.report, force=args.force, show=print))

    from m2pt_deploy.pipelines.export import ExportResult
    from m2pt_deploy.verify import check_inputs, load_onnx, verify_onnx

    load_onnx(args.onnx)
    ckpt = load_model_checkpoint(args)
    inputs = None
    if args.inputs:
        try:
            inputs = check_inputs(_load_inputs(args.inputs), ckpt.spec.input_size)
        except M2ptError as e:
            raise M2ptError(e.message, e.path or args.inputs) from e
    try:
        report = verify_onnx(
            ckpt, args.onnx, inputs=inputs, batch_size=args.batch_size, seed=args.seed
        )
    except M2ptError as e:
        # What verify_onnx rejects without naming a file is about the ONNX model.
        raise M2ptError(e.message, e.path or args.onnx) from e
    print(report)
    if args.report:
        report.write_json(args.report, force=args.force)
    return finish(ExportResult((), report))


def entrypoint() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    entrypoint()
