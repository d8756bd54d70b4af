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

The goal table shows only the goals that apply to the model measured: the speed and
export-cost goals were set for ViT-B/16. Writes bench.json, bench.md and bench.png.

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
from pathlib import Path
from typing import Any

from m2pt_deploy.cli.common import (
    EXIT_OK,
    HelpFormatter,
    add_model_args,
    add_version,
    model_options,
    model_request,
    run_main,
)
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.fileio import check_output_folder
from m2pt_deploy.filekind import file_kind, require_checkpoint, require_onnx

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
                        help="cpu only: epochs of the digits ViT whose fp32 vs int8 accuracy is reported; "
                        "0 skips it (default: 20)")
    accuracy = parser.add_argument_group("accuracy per format (with MODEL)")
    accuracy.add_argument("--data", metavar="FILE.npz|DIR",
                          help="labelled images, as m2pt-train reads them (.npz with x and y, or one folder per "
                          "class; a folder with train/ and val/ is scored on val/): top-1 of every format. "
                          "Without it: top-1 agreement with the fp32 model")
    accuracy.add_argument("--eval-images", type=int, default=256, metavar="N",
                          help="images scored, a seeded sample when --data holds more; 0: all (default: 256)")
    run = parser.add_argument_group("measurement")
    run.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                     help="cpu: every runtime on this machine's CPU; cuda: the random-weight torch models on the "
                     "current GPU (default: cpu)")
    run.add_argument("--batches", nargs="+", type=_positive, metavar="N",
                     help="batch sizes (default: 1 8 on cpu, 1 8 64 on cuda; an ONNX file's own fixed batch)")
    run.add_argument("--rounds", type=_positive, help="interleaved rounds (default: 10 on cpu, 30 on cuda)")
    run.add_argument("--warmup", type=int, help="warm-up runs per variant (default: 2 on cpu, 3 on cuda)")
    run.add_argument("--dtypes", nargs="+", choices=("fp32", "fp16", "bf16"), default=["fp32", "fp16", "bf16"],
                     help="cuda only: fp32, and fp16 / bf16 under torch.autocast (default: all three)")
    run.add_argument("--seed", type=int, default=0,
                     help="seed of random weights, λ, inputs and the --data sample (default: 0)")
    parts = parser.add_argument_group("what to run")
    parts.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    parts.add_argument("--no-int8", action="store_true", help="cpu only: leave out the int8 rows and checks")
    parts.add_argument("--no-export-cost", action="store_true",
                       help="cpu only: do not time m2pt-export as its own process")
    parts.add_argument("--calib-images", type=_positive, default=64, metavar="N",
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


def _check_flags(args: argparse.Namespace) -> None:
    """Flags that do not fit together, refused before anything is built."""
    if args.warmup is not None and args.warmup < 0:
        raise M2ptError(f"--warmup must be 0 or more, got {args.warmup}")
    if args.eval_images < 0:
        raise M2ptError(f"--eval-images must be 0 (all) or more, got {args.eval_images}")
    if args.accuracy_epochs is not None and args.accuracy_epochs < 0:
        raise M2ptError(f"--accuracy-epochs must be 0 or more, got {args.accuracy_epochs}")
    if args.model is None:
        if args.data is not None:
            raise M2ptError("--data needs a MODEL: random weights have no accuracy to measure")
        if args.ema:
            raise M2ptError("--ema needs a training CHECKPOINT")
        return
    if args.device == "cuda":
        raise M2ptError("--device cuda times random-weight models only; benchmark MODEL on the CPU "
                        "(leave out --device cuda)")
    if args.model_kwargs is not None:
        raise M2ptError("--model-kwargs is for the random-weight run; a checkpoint or ONNX file declares its model")
    if args.accuracy_epochs is not None:
        raise M2ptError("--accuracy-epochs is for the random-weight run (the digits ViT); with MODEL, "
                        "--data gives the accuracy of each format")
    if _is_onnx(args.model) and (args.arch or args.ema):
        raise M2ptError("--arch and --ema are for checkpoints; an ONNX file is benchmarked as it is "
                        "(--input-size sets an input shape the file leaves open)")


def _check_files(args: argparse.Namespace) -> None:
    """The model recognised, --data found and --out probed before minutes of benchmarking (and
    before torch is imported), so a read-only --out is refused now, not after the last round."""
    model_request(args)
    if args.model is not None and not _is_onnx(args.model):
        require_checkpoint(args.model)
    elif args.model is not None:
        require_onnx(args.model)
    if args.data is not None and file_kind(args.data).kind == "missing":
        raise M2ptError("no such file or folder", args.data)
    check_output_folder(args.out)


def _is_onnx(path: str) -> bool:
    return file_kind(path).kind == "onnx"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kwargs = _kwargs(args.model_kwargs)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise M2ptError("--out must be a directory, this is a file", out)
    _check_flags(args)
    _check_files(args)
    if args.model is None and args.input_size:
        c, h, w = args.input_size
        kwargs = {**kwargs, "in_chans": c, "img_size": (h, w)}
    if args.device == "cuda":
        from m2pt_deploy.bench.cuda_report import markdown as cuda_markdown
        from m2pt_deploy.pipelines.bench import bench_cuda

        data, files = bench_cuda(out, arch=args.arch, model_kwargs=kwargs, batches=args.batches,
                                 dtypes=args.dtypes, rounds=args.rounds, warmup=args.warmup, seed=args.seed,
                                 compile=not args.no_compile)
        print(cuda_markdown(data))
        print(f"wrote {' and '.join(map(str, files))}")
        return EXIT_OK

    from m2pt_deploy.bench.cpu_report import markdown
    from m2pt_deploy.pipelines.bench import bench_cpu

    data, files = bench_cpu(
        out, args.model, model_options=model_options(args), arch=args.arch, model_kwargs=kwargs, data=args.data,
        eval_images=args.eval_images, batches=args.batches, rounds=args.rounds or 10,
        warmup=2 if args.warmup is None else args.warmup, seed=args.seed, compile=not args.no_compile,
        int8=not args.no_int8, export_cost=not args.no_export_cost,
        export_command=(sys.executable, "-m", "m2pt_deploy.cli.export"), calib_images=args.calib_images,
        accuracy_epochs=20 if args.accuracy_epochs is None else args.accuracy_epochs)
    print(markdown(data))
    json_path, md_path, png_path = files
    print(f"wrote {json_path}, {md_path} and {png_path}")
    return EXIT_OK


def entrypoint() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    entrypoint()
