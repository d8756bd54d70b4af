"""m2pt-bench: every runtime side by side, on one machine, in one interleaved run.

Without MODEL: a random-weight ViT (--arch, default vit_base_patch16_224) with a random-λ
pathway; nothing is downloaded. Rows: torch eager and torch.compile (vanilla, merged and
unmerged models), ONNX Runtime on the plain export, on the optimized export (m2pt-export
--optimize) and on the int8 export (vanilla and merged), at each batch size: images/s,
median and p95 latency, the memory each variant adds, start-up, and the per-round ratio to
torch eager. Beside them: the machine's fp32 matmul peak measured in the same run,
merged/vanilla and unmerged/merged latency ratios, m2pt-export's wall time and peak RSS,
session start-up, int8's top-1 agreement with fp32, and its accuracy delta on real labelled
images (the demo's digits ViT, trained here).

With a CHECKPOINT (any format m2pt-export reads): the same rows for that model as trained
(unmerged, when it has pathways) and merged, beside a random vanilla ViT of the same
architecture (the latency baseline), and the m2pt-export cost of that file. With MODEL.onnx:
that file in ONNX Runtime, plus optimized and int8 copies derived from it when it is a
plain fp32 export. For either, every format's top-1 on --data (labelled images), or without
--data its top-1 agreement with the fp32 model (not accuracy, and the report says so).

Every family: --family videomae or pointmae without MODEL benchmarks that family's model at
the paper's size with random weights (VideoMAE V2 ViT-B on 16x224x224 clips; Point-MAE 384 wide,
12 blocks, 1024 points), and --input-size 1 1024 128 makes the random ViT AudioMAE's ViT-B; a
CHECKPOINT of any family is benchmarked on inputs in its own layout. Without --data, int8 is
calibrated on seeded synthetic inputs in that layout (RGB image models: photo tiles): its rows
measure speed, not accuracy, and the report says so.

FLOPs per sample are counted from the exported graph (grouping and every elementwise op
included), and the fp32 matmul peak is timed in every round beside the models, so each row
shows the fraction of that same round's peak it reached.

The goal table shows only the goals that apply to the model measured: ViT-B/16's speed and
export-cost goals; VideoMAE V2 ViT-B's and AudioMAE ViT-B's fraction of peak at batch 1 and
Point-MAE's distance from its FLOP-count limit, each with int8 / fp32; merged / vanilla for
every model. Goals are reported, never asserted. Writes bench.json, bench.md and bench.png.

--device cuda times the vanilla, merged and unmerged random-weight torch models on the GPU
instead: torch eager and torch.compile, fp32 and fp16 / bf16 autocast, each batch size, with
per-round merged/vanilla and unmerged/merged ratios. Writes bench-cuda.json and
bench-cuda.md (rewritten after every measured cell, so a run cut short keeps its figures).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from m2pt_deploy.cli.common import (
    EXIT_OK,
    HelpFormatter,
    add_model_args,
    add_version,
    model_request,
    run_main,
)
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.request import BenchRequest

__all__ = ["build_parser", "entrypoint", "main"]

DEFAULT_ARCH = "vit_base_patch16_224"  # the help text names it; pipelines.bench runs it


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _kwargs(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise M2ptError(f"--model-kwargs is not JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(value, dict):
        raise M2ptError(f"--model-kwargs must be a JSON object, got {type(value).__name__}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m2pt-bench", description=__doc__, formatter_class=HelpFormatter)
    add_version(parser)
    parser.add_argument("model", nargs="?", metavar="CHECKPOINT|MODEL.onnx",
                        help="your model: a checkpoint (.safetensors, .pth, ...) or an ONNX file (default: a "
                        "random-weight ViT of --arch)")
    add_model_args(parser)
    random = parser.add_argument_group("random-weight run (no MODEL)")
    random.add_argument("--model-kwargs", metavar="JSON",
                        help='timm create_model arguments of the random --arch (default vit_base_patch16_224), '
                        'e.g. \'{"img_size": 32, "depth": 2}\'')
    random.add_argument("--accuracy-epochs", type=int, metavar="N",
                        help="cpu only: epochs of the digits ViT whose fp32 vs int8 accuracy is reported for "
                        "image models (video, point and spectrogram models report their shipped small "
                        "model's, trained already); 0 skips it (default: 20)")
    accuracy = parser.add_argument_group("accuracy per format (with MODEL)")
    accuracy.add_argument("--data", metavar="FILE.npz|DIR",
                          help="labelled images, as m2pt-train reads them (.npz with x and y, or one folder per "
                          "class; a folder with train/ and val/ is scored on val/): top-1 of every format. "
                          "Without it: top-1 agreement with the fp32 model")
    accuracy.add_argument("--eval-images", type=int, metavar="N",
                          help="images scored, a seeded sample when --data holds more; 0: all (default: 256)")
    run = parser.add_argument_group("measurement")
    run.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                     help="cpu: every runtime on this machine's CPU; cuda: the random-weight torch models on the "
                     "current GPU (default: cpu)")
    run.add_argument("--batches", nargs="+", type=_positive, metavar="N",
                     help="batch sizes (default: 1 8 on cpu, 1 8 64 on cuda; an ONNX file's own fixed batch)")
    run.add_argument("--rounds", type=_positive, help="interleaved rounds (default: 10 on cpu, 30 on cuda)")
    run.add_argument("--warmup", type=int, help="warm-up runs per variant (default: 2 on cpu, 3 on cuda)")
    run.add_argument("--dtypes", nargs="+", choices=("fp32", "fp16", "bf16"),
                     help="cuda only: fp32, and fp16 / bf16 under torch.autocast (default: all three)")
    run.add_argument("--seed", type=int, default=0,
                     help="seed of random weights, λ, inputs and the --data sample (default: 0)")
    parts = parser.add_argument_group("what to run")
    parts.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    parts.add_argument("--no-int8", action="store_true", help="cpu only: leave out the int8 rows and checks")
    parts.add_argument("--no-export-cost", action="store_true",
                       help="cpu only: do not time m2pt-export as its own process")
    parts.add_argument("--calib-images", type=_positive, metavar="N",
                       help="cpu only: images calibrating the int8 models: photo tiles for RGB models, else "
                       "--data images that are not scored (default: 64)")
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder for bench.json, bench.md and bench.png, or with --device cuda bench-cuda.json and "
        "bench-cuda.md (created; those files are replaced)",
    )
    return parser


def request_from_args(args: argparse.Namespace) -> BenchRequest:
    """The command line as one :class:`BenchRequest` (not yet validated)."""
    kwargs = _kwargs(args.model_kwargs) if args.model_kwargs is not None else None
    settings = model_request(args)
    return BenchRequest(
        args.out, args.model, args.device, settings, kwargs, args.accuracy_epochs, args.data, args.eval_images,
        tuple(args.batches) if args.batches else None, args.rounds, args.warmup,
        tuple(args.dtypes) if args.dtypes else None, args.seed, not args.no_compile, not args.no_int8,
        not args.no_export_cost, args.calib_images)


def main(argv: Sequence[str] | None = None) -> int:
    request = request_from_args(build_parser().parse_args(argv)).validate()
    from m2pt_deploy.pipelines.bench import bench

    data, files = bench(request, export_command=(sys.executable, "-m", "m2pt_deploy.cli.export"))
    if request.device == "cuda":
        from m2pt_deploy.bench.cuda_report import markdown as cuda_markdown

        print(cuda_markdown(data))
        print(f"wrote {' and '.join(map(str, files))}")
        return EXIT_OK
    from m2pt_deploy.bench.cpu_report import markdown

    print(markdown(data))
    json_path, md_path, png_path = files
    print(f"wrote {json_path}, {md_path} and {png_path}")
    return EXIT_OK


def entrypoint() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    entrypoint()
