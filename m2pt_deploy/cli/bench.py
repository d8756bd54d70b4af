"""m2pt-bench: latency of the merged model against a vanilla ViT and the unmerged model.

ONNX Runtime on CPU: merged vs vanilla (expected ratio 1.00 within noise). torch eager on
CPU: the unmerged pathway model vs the merged one (the cost merging removes). Runs are
interleaved round by round; medians and the median per-round ratio are reported with the
machine named. Random weights and a random-λ pathway: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from m2pt_deploy.cli.common import EXIT_OK, run_main
from m2pt_deploy.errors import M2ptError

__all__ = ["build_parser", "entrypoint", "main"]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _kwargs(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise M2ptError(f"--model-kwargs is not JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(value, dict):
        raise M2ptError(f"--model-kwargs must be a JSON object, got {type(value).__name__}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m2pt-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--arch",
        default="vit_base_patch16_224",
        metavar="NAME",
        help="timm architecture (default: vit_base_patch16_224)",
    )
    model.add_argument(
        "--model-kwargs",
        default="{}",
        metavar="JSON",
        help='timm create_model arguments, e.g. \'{"img_size": 32, "depth": 2}\'',
    )
    run = parser.add_argument_group("measurement")
    run.add_argument(
        "--batches",
        nargs="+",
        type=_positive,
        default=[1, 8],
        metavar="N",
        help="batch sizes (default: 1 8)",
    )
    run.add_argument(
        "--rounds", type=_positive, default=30, help="interleaved rounds (default: 30)"
    )
    run.add_argument("--warmup", type=int, default=3, help="warm-up runs per variant (default: 3)")
    run.add_argument(
        "--seed", type=int, default=0, help="seed of weights, λ and inputs (default: 0)"
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder for bench.json and bench.md (created; those two files are replaced)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kwargs = _kwargs(args.model_kwargs)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise M2ptError("--out must be a directory, this is a file", out)
    if args.warmup < 0:
        raise M2ptError(f"--warmup must be 0 or more, got {args.warmup}")

    from m2pt_deploy.verify.latency import run_benchmark, spec_for_arch

    spec = spec_for_arch(args.arch, kwargs)
    report = run_benchmark(
        spec,
        batches=args.batches,
        rounds=args.rounds,
        warmup=args.warmup,
        seed=args.seed,
        log=lambda line: print(f"m2pt-bench: {line}", file=sys.stderr, flush=True),
    )
    json_path, md_path = report.write(args.out)
    print(report.markdown())
    print(f"wrote {json_path} and {md_path}")
    return EXIT_OK


def entrypoint() -> None:
    sys.exit(run_main(main))
