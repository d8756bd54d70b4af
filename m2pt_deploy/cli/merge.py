"""``m2pt-merge``: fold the pathways of a checkpoint into a plain timm ViT checkpoint."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from m2pt_deploy.cli.common import (
    EXIT_OK,
    HelpFormatter,
    add_model_args,
    add_output_args,
    add_version,
    model_request,
    run_main,
)
from m2pt_deploy.families import family_of
from m2pt_deploy.progress import step
from m2pt_deploy.request import MergeRequest

__all__ = ["build_parser", "entrypoint", "main"]

_EPILOG = """\
The output is a plain timm checkpoint (.safetensors): its keys are exactly those of the
vanilla model, so timm loads it directly, e.g.
  timm.create_model(ARCH, pretrained=True, num_classes=N,
                    pretrained_cfg_overlay=dict(file="merged.safetensors", num_classes=N))
(timm drops the head unless the overlay's num_classes matches; for a non-standard size pass the
model keyword arguments too: they are in the file's metadata).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m2pt-merge",
        description="Fold W + Σ λ·W_aux into one weight per layer: the result is a vanilla ViT.",
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    add_version(parser)
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="pathway checkpoint (ours or the reference code's)")
    add_output_args(parser, default_help="CHECKPOINT stem + '_merged.safetensors'")
    add_model_args(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    request = MergeRequest(args.checkpoint, args.output, args.force, model_request(args)).validate()
    from m2pt_deploy.merge import merge_checkpoint
    from m2pt_deploy.pipelines.export import load_for_export

    ckpt = load_for_export(request.checkpoint, request.model)
    with step("merging"):
        out, layers, tensors = merge_checkpoint(ckpt, request.destination, force=request.force)
    what = family_of(ckpt.spec).describe(ckpt.spec)
    print(f"wrote {out} ({layers} pathway layers folded, {tensors} tensors, {what})")
    return EXIT_OK


def entrypoint() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    entrypoint()
