"""m2pt-serve-bench: throughput, latency and memory of m2pt-serve over HTTP (batching off and on)
and gRPC; the work is :func:`m2pt_deploy.bench.serving.run_serving_benchmark`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from m2pt_deploy.cli.common import EXIT_CHECK_FAILED, EXIT_OK, HelpFormatter, add_output_args, add_version, run_main
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.fileio import atomic_output, check_output_path
from m2pt_deploy.filekind import require_served_model

__all__ = ["build_parser", "entrypoint", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="m2pt-serve-bench",
        description="Benchmark m2pt-serve on loopback: HTTP with dynamic batching off and on, and "
                    "gRPC with batching on, at several client counts, bounded in requests and time "
                    "per level; reports req/s, p50/p95/p99 latency and each server's peak RSS.",
    )
    add_version(parser)
    parser.add_argument("model", metavar="MODEL.onnx", help="an exported .onnx file")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], metavar="N",
                        help="concurrent clients per level (default: 1 8 32)")
    parser.add_argument("--requests", type=int, default=300, metavar="N",
                        help="most requests per level and mode (default: 300)")
    parser.add_argument("--duration-s", type=float, default=15.0, metavar="S",
                        help="most seconds per level and mode (default: 15)")
    parser.add_argument("--max-batch", type=int, default=32, metavar="N",
                        help="max batch of the batching servers (default: 32)")
    parser.add_argument("--max-delay-ms", type=float, default=5.0, metavar="T",
                        help="max delay of the batching servers (default: 5)")
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="m2pt-serve --threads for every server (default: 0, one per physical core)")
    parser.add_argument("--rounds", type=int, default=3, metavar="N",
                        help="alternating rounds per level, sharing its budget (default: 3)")
    parser.add_argument("--warmup", type=int, default=10, metavar="N",
                        help="requests per server before measuring (default: 10)")
    add_output_args(parser, default_help="no file; the table is printed either way")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    require_served_model(args.model, folder_ok=False)
    if args.output:
        check_output_path(args.output, force=args.force)
    elif args.force:
        raise M2ptError("--force overwrites the -o report; there is no -o")
    from m2pt_deploy.bench.serving import run_serving_benchmark, serving_table

    report = run_serving_benchmark(
        args.model, serve_command=(sys.executable, "-m", "m2pt_deploy.cli.serve"), clients=tuple(args.clients),
        requests=args.requests, duration_s=args.duration_s,
        max_batch=args.max_batch, max_delay_ms=args.max_delay_ms, threads=args.threads,
        rounds=args.rounds, warmup=args.warmup)
    print(serving_table(report))
    if args.output:
        with atomic_output(args.output, force=args.force) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
    return EXIT_OK if report["errors"] == 0 else EXIT_CHECK_FAILED


def entrypoint() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    entrypoint()
