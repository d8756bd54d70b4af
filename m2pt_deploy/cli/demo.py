"""m2pt-demo: the whole pipeline on scikit-learn's handwritten digits, no download needed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from m2pt_deploy.cli.common import EXIT_CHECK_FAILED, EXIT_OK, HelpFormatter, add_version, run_main
from m2pt_deploy.fileio import check_output_folder

__all__ = ["build_parser", "entrypoint", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(formatter_class=HelpFormatter, 
        prog="m2pt-demo",
        description="Train a digits ViT with a pathway from an audio ViT, and the same ViT without "
                    "it; merge, export to ONNX and verify the pathway model; print the comparison.",
    )
    add_version(p)
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (demo-out)")
    p.add_argument("--epochs", type=int, default=30, help="training epochs of each run (30)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the initial weights, the split and the batch order of both runs (0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_output_folder(args.out)  # a read-only --out is refused now, not after minutes of training
    # The demo's 64-wide ViT gains nothing from a second thread and loses up to 7x when the
    # cores are shared (OpenMP threads spin waiting for each other); one thread also makes
    # the printed accuracies independent of the core count.
    import torch

    from m2pt_deploy.pipelines.demo import run_demo

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_demo(args.out, epochs=args.epochs, seed=args.seed, progress=not args.quiet)
    finally:
        torch.set_num_threads(threads)
    rows = [("with audio pathway", result.pathway), ("without pathway", result.baseline)]
    print(f"\ndigits validation accuracy, {args.epochs} epochs, seed {args.seed}:")
    for name, run in rows:
        print(f"  {name:<20} final {run.history[-1]['val_acc']:.4f}   best {run.best_val_acc:.4f}")
    print(f"\ncheckpoint {result.pathway.best}\nmerged     {result.merged}\nonnx       {result.onnx}")
    print(f"curves     {result.pathway.out_dir / 'curves.png'}")
    print(f"comparison {result.plot}  (validation accuracy with vs without the pathway, learned λ)")
    print(f"report     {result.summary}  (these figures as JSON; scripts/readme_demo_table.py renders them)\n")
    print(result.report)
    return EXIT_OK if result.report else EXIT_CHECK_FAILED


def entrypoint() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    entrypoint()
