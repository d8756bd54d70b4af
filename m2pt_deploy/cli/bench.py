"""m2pt-bench: every runtime side by side, on one machine, in one interleaved run.

Rows: torch eager and torch.compile (vanilla, merged and unmerged models), ONNX Runtime
on the plain export, on the optimized export (m2pt-export --optimize) and on the int8
export (vanilla and merged), at each batch size: images/s, median and p95 latency, the
memory each variant adds, start-up, and the per-round ratio to torch eager. Beside them:
the machine's fp32 matmul peak measured in the same run, merged/vanilla and
unmerged/merged latency ratios, m2pt-export's wall time and peak RSS, session start-up,
int8's top-1 agreement with fp32, and its accuracy delta on real labelled images (the
demo's digits ViT, trained here). Writes bench.json, bench.md and bench.png. Random
weights with a random-λ pathway: nothing is downloaded.

--device cuda times the vanilla, merged and unmerged torch models on the GPU instead:
torch eager and torch.compile, fp32 and fp16 / bf16 autocast, each batch size, with
per-round merged/vanilla and unmerged/merged ratios. Writes bench-cuda.json and
bench-cuda.md (rewritten after every measured cell, so a run cut short keeps its figures).
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
    run.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                     help="cpu: every runtime on this machine's CPU; cuda: the torch models on the "
                     "current GPU (default: cpu)")
    run.add_argument(
        "--batches",
        nargs="+",
        type=_positive,
        metavar="N",
        help="batch sizes (default: 1 8 on cpu, 1 8 64 on cuda)",
    )
    run.add_argument(
        "--rounds", type=_positive, help="interleaved rounds (default: 10 on cpu, 30 on cuda)"
    )
    run.add_argument("--warmup", type=int, help="warm-up runs per variant (default: 2 on cpu, 3 on cuda)")
    run.add_argument("--dtypes", nargs="+", choices=("fp32", "fp16", "bf16"), default=["fp32", "fp16", "bf16"],
                     help="cuda only: fp32, and fp16 / bf16 under torch.autocast (default: all three)")
    run.add_argument(
        "--seed", type=int, default=0, help="seed of weights, λ and inputs (default: 0)"
    )
    parts = parser.add_argument_group("what to run")
    parts.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    parts.add_argument("--no-int8", action="store_true", help="cpu only: leave out the int8 rows and checks")
    parts.add_argument("--no-export-cost", action="store_true",
                       help="cpu only: do not time m2pt-export as its own process")
    parts.add_argument("--calib-images", type=_positive, default=64, metavar="N",
                       help="cpu only: photo tiles calibrating the int8 models (default: 64)")
    parts.add_argument("--accuracy-epochs", type=int, default=20, metavar="N",
                       help="cpu only: epochs of the digits ViT whose fp32 vs int8 accuracy is reported; "
                       "0 skips it (default: 20)")
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder for bench.json, bench.md and bench.png, or with --device cuda bench-cuda.json and "
        "bench-cuda.md (created; those files are replaced)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kwargs = _kwargs(args.model_kwargs)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise M2ptError("--out must be a directory, this is a file", out)
    if args.warmup is not None and args.warmup < 0:
        raise M2ptError(f"--warmup must be 0 or more, got {args.warmup}")
    if args.device == "cuda":
        return _cuda(args, kwargs, out)
    if args.accuracy_epochs < 0:
        raise M2ptError(f"--accuracy-epochs must be 0 or more, got {args.accuracy_epochs}")

    from m2pt_deploy.verify.bench_report import markdown, write_report
    from m2pt_deploy.verify.benchmark import BenchOptions, run_benchmark
    from m2pt_deploy.verify.latency import spec_for_arch

    spec = spec_for_arch(args.arch, kwargs)
    options = BenchOptions(
        batches=tuple(args.batches or (1, 8)), rounds=args.rounds or 10,
        warmup=2 if args.warmup is None else args.warmup, seed=args.seed,
        compile=not args.no_compile, int8=not args.no_int8, export_cost=not args.no_export_cost,
        calib_images=args.calib_images,
    )
    data = run_benchmark(spec, options, log=_log)
    data["accuracy"] = _accuracy(args.accuracy_epochs, args.seed) if args.accuracy_epochs and not args.no_int8 else None
    json_path, md_path, png_path = write_report(data, out)
    print(markdown(data))
    print(f"wrote {json_path}, {md_path} and {png_path}")
    return EXIT_OK


def _cuda(args: argparse.Namespace, kwargs: dict[str, Any], out: Path) -> int:
    from m2pt_deploy.bench.cuda import CudaBenchOptions, check_cuda, run_cuda_benchmark
    from m2pt_deploy.bench.cuda_report import markdown, write_report
    from m2pt_deploy.verify.latency import spec_for_arch

    try:
        check_cuda()
    except M2ptError as e:
        raise M2ptError(f"--device cuda: {e}") from None
    defaults = CudaBenchOptions()
    options = CudaBenchOptions(
        batches=tuple(args.batches or defaults.batches), dtypes=tuple(dict.fromkeys(args.dtypes)),
        rounds=args.rounds or defaults.rounds, warmup=defaults.warmup if args.warmup is None else args.warmup,
        seed=args.seed, compile=not args.no_compile,
    )
    options.check()
    spec = spec_for_arch(args.arch, kwargs)
    data = run_cuda_benchmark(spec, options, log=_log, on_cell=lambda partial: write_report(partial, out))
    json_path, md_path = write_report(data, out)
    print(markdown(data))
    print(f"wrote {json_path} and {md_path}")
    return EXIT_OK


def _log(line: str) -> None:
    print(f"m2pt-bench: {line}", file=sys.stderr, flush=True)


def _accuracy(epochs: int, seed: int) -> dict[str, Any]:
    import tempfile

    from m2pt_deploy.int8_accuracy import digits_int8_accuracy

    _log(f"training the digits ViT for {epochs} epochs: fp32 vs int8 accuracy on its held-out split")
    with tempfile.TemporaryDirectory(prefix="m2pt-bench-digits-") as tmp:
        return digits_int8_accuracy(Path(tmp), epochs=epochs, seed=seed)


def entrypoint() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    entrypoint()
