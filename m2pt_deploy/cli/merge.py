"""``m2pt-merge``: fold the pathways of a checkpoint into a plain timm ViT checkpoint."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from m2pt_deploy.cli.common import (
    EXIT_OK,
    HelpFormatter,
    add_model_args,
    add_output_args,
    add_version,
    load_model_checkpoint,
    run_main,
    step,
)
from m2pt_deploy.fileio import check_output_path

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
    from m2pt_deploy.merge import merge_state_dict
    from m2pt_deploy.model.build import build_vanilla, load_strict
    from m2pt_deploy.model.checkpoint import save_checkpoint

    src = Path(args.checkpoint)
    out = check_output_path(args.output or src.with_name(f"{src.stem}_merged.safetensors"), force=args.force)
    ckpt = load_model_checkpoint(args)
    with step("merging"):
        merged = merge_state_dict(ckpt.state_dict)
        load_strict(build_vanilla(ckpt.spec), merged, what="merged state dict")
    extra = {"merged_from": {"sha256": ckpt.sha256, "kind": ckpt.kind,
                             "pathway": ckpt.pathway.to_dict() if ckpt.pathway else None}}
    save_checkpoint(out, merged, ckpt.spec, extra={**ckpt.extra, **extra}, force=args.force)
    layers = sum(key.endswith(".aux_weight.0") for key in ckpt.state_dict)
    print(f"wrote {out} ({layers} pathway layers folded, {len(merged)} tensors, arch {ckpt.spec.arch})")
    return EXIT_OK


def entrypoint() -> None:
    sys.exit(run_main(main))
