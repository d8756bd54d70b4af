"""m2pt-serve: serve an exported ONNX model or a Triton model repository over KServe v2 HTTP and gRPC."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from m2pt_deploy.cli.common import EXIT_OK, HelpFormatter, add_version, run_main
from m2pt_deploy.filekind import require_served_model

__all__ = ["build_parser", "entrypoint", "main"]

DEFAULT_KEY_ENV = "M2PT_SERVE_API_KEY"


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < 0 or (kind is int and value < 1):
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


_EPILOG = """\
examples:
  m2pt-serve vit.onnx                                 # model "vit" on http://127.0.0.1:8000, gRPC on :8001
  m2pt-serve vit.onnx --port 0 --grpc-port 0          # free ports, both printed
  m2pt-serve models/ --port 8080 --grpc-port 8081    # a repository from m2pt-export --format triton
  m2pt-serve models/ --model-control-mode explicit --load-model vit   # others loaded on request
  M2PT_SERVE_API_KEY=secret m2pt-serve vit.onnx --host 0.0.0.0   # reachable from elsewhere: set a key
  m2pt-serve vit_int8_cpu.onnx --max-batch 16 --max-delay-ms 5 --threads 4

  curl -s localhost:8000/v2/models/vit                # KServe v2 metadata
  curl -s -X POST localhost:8000/v2/models/vit/classify --data-binary @cat.jpg   # image models
  (any KServe v2 client works too, e.g. tritonclient.http, or tritonclient.grpc on port 8001)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        epilog=_EPILOG,
        prog="m2pt-serve",
        description="Serve one exported ONNX file (as model <file stem>) or a Triton-layout "
                    "model repository through ONNX Runtime, over the KServe v2 protocol as Triton "
                    "speaks it: HTTP (JSON and binary tensors) and gRPC, sharing one dynamic "
                    "batcher, the limits, the API key and Prometheus metrics.",
    )
    add_version(parser)
    parser.add_argument("model", metavar="MODEL_OR_REPOSITORY",
                        help="an .onnx file, or a folder of <name>/<version>/model.onnx")
    net = parser.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1",
                     help="address to bind (default 127.0.0.1; anything else is reachable from "
                          "other machines)")
    net.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one (default 8000)")
    net.add_argument("--grpc-port", type=int, default=8001,
                     help="KServe v2 gRPC port, on the same host (Triton's default 8001); 0 picks a "
                          "free one (default 8001)")
    net.add_argument("--no-grpc", action="store_true", help="serve HTTP only")
    net.add_argument("--api-key-env", default=DEFAULT_KEY_ENV, metavar="VAR",
                     help=f"environment variable holding an API key; when set, every request but "
                          f"the health probes needs it as 'Authorization: Bearer KEY' or "
                          f"'X-API-Key: KEY' (HTTP headers, or gRPC call metadata) "
                          f"(default {DEFAULT_KEY_ENV})")
    net.add_argument("--max-body-mb", type=_positive(float), default=64.0,
                     help="largest request body (HTTP) or message (gRPC) accepted; larger ones get "
                          "413 / RESOURCE_EXHAUSTED (default 64)")
    net.add_argument("--body-timeout-s", type=_positive(float), default=10.0,
                     help="an upload that sends nothing for this long gets 408 and its connection "
                          "is closed (default 10)")
    net.add_argument("--allow-nonfinite", action="store_true",
                     help="accept NaN and Inf in floating-point inputs (refused with 400 by default)")
    batching = parser.add_argument_group("batching and load")
    batching.add_argument("--max-batch", type=_positive(int), default=8,
                          help="most rows per model call; 1 turns dynamic batching off (default 8)")
    batching.add_argument("--max-delay-ms", type=_positive(float), default=2.0,
                          help="longest a request waits for others to batch with (default 2)")
    batching.add_argument("--max-queue", type=_positive(int), default=128,
                          help="requests waiting per model before 503 + Retry-After (default 128)")
    batching.add_argument("--request-timeout-s", type=_positive(float), default=30.0,
                          help="a request still unanswered after this, counted from its first "
                               "byte (upload, parsing, queue and model), gets 504; an upload not "
                               "finished by then gets 408 (default 30)")
    batching.add_argument("--drain-timeout-s", type=_positive(float), default=30.0,
                          help="on SIGTERM, how long in-flight requests may take to finish (default 30)")
    control = parser.add_argument_group("model control (a repository folder)")
    control.add_argument("--model-control-mode", choices=["none", "explicit"], default="none",
                         help="none: every model of the repository is loaded at start and stays; "
                              "explicit: only --load-model ones, and clients load and unload models "
                              "by name (POST /v2/repository/models/NAME/load|unload, gRPC "
                              "RepositoryModelLoad/Unload), as Triton's flag of that name (default none)")
    control.add_argument("--load-model", action="append", default=[], metavar="NAME",
                         help="with --model-control-mode explicit, a model to load at start; repeat "
                              "it for several, '*' for all")
    parser.add_argument("--providers", nargs="+", metavar="EP", default=None,
                        help="ONNX Runtime execution providers in priority order: cpu, cuda, "
                             "tensorrt or full names (default cpu; cuda/tensorrt need onnxruntime-gpu)")
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="ONNX Runtime intra-op threads per model; 0 means one per physical core (default 0). "
                             "On a CPU shared with other work, 1 often beats spinning threads")
    parser.add_argument("--log-level", default="warning",
                        choices=["critical", "error", "warning", "info", "debug"],
                        help="log level of the HTTP server, uvicorn (default warning)")
    return parser


def _api_key(var: str) -> str | None:
    key = os.environ.get(var, "")
    return key or None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    require_served_model(args.model)  # a checkpoint is named as one, before the server imports anything
    from m2pt_deploy.serving.core import ServeConfig
    from m2pt_deploy.serving.server import serve

    config = ServeConfig(
        max_batch=args.max_batch, max_delay_ms=args.max_delay_ms, max_queue=args.max_queue,
        request_timeout_s=args.request_timeout_s, max_body_bytes=int(args.max_body_mb * (1 << 20)),
        api_key=_api_key(args.api_key_env), body_timeout_s=args.body_timeout_s,
        allow_nonfinite=args.allow_nonfinite,
    )
    serve(args.model, config, host=args.host, port=args.port, grpc_port=None if args.no_grpc else args.grpc_port,
          providers=args.providers, threads=args.threads, drain_timeout_s=args.drain_timeout_s,
          log_level=args.log_level, api_key_env=args.api_key_env, model_control=args.model_control_mode,
          load_model=args.load_model)
    return EXIT_OK


def entrypoint() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    entrypoint()
