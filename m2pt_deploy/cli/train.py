"""m2pt-train: fine-tune a target ViT with pathways from auxiliary ViTs of other modalities."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from m2pt_deploy.cli.common import EXIT_OK, HelpFormatter, add_version, run_main
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.filekind import file_kind
from m2pt_deploy.model.pathway_options import DEFAULT_LAYERS
from m2pt_deploy.train.config import TrainConfig

__all__ = ["build_parser", "entrypoint", "main"]

_EPILOG = """\
examples:
  m2pt-train vit_b_imagenet.pth --aux audio=audioset_vit.pth --data flowers/ --num-classes 102 --out runs/flowers
  m2pt-train target.safetensors --aux audio=aux.pth --data spectrograms.npz --mode probe --out runs/probe
  torchrun --nproc_per_node 4 -m m2pt_deploy.cli.train target.pth --aux aux.pth --data data/ --out runs/ddp
  m2pt-train --resume runs/flowers
  m2pt-train --resume runs/flowers --epochs 20      # extend a finished 10-epoch run to 20

The run folder gets last.safetensors and best.safetensors (feed either to m2pt-merge or
m2pt-export), resume.safetensors, metrics.jsonl and curves.png.

Extending a run recomputes the warm-up + cosine schedule for the new total, as timm and MAE
do: warm-up is not repeated, and the lr continues from the new curve's value at the step
reached (a finished run jumps back up from --min-lr).
"""


# None on the command line means "not given", which --resume needs to tell apart.
_DEFAULT_EPOCHS: int = TrainConfig.epochs


def _aux(text: str) -> tuple[str, str | None]:
    modality, sep, path = text.partition("=")
    return (path, modality) if sep and modality and "/" not in modality else (text, None)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="m2pt-train", description=__doc__, epilog=_EPILOG,
                                formatter_class=HelpFormatter)
    add_version(p)
    p.add_argument("target", nargs="?", help="target ViT checkpoint (timm, MAE fine-tuned, or ours)")
    p.add_argument("--aux", action="append", default=[], type=_aux, metavar="[MODALITY=]CKPT",
                   help="auxiliary ViT of another modality, e.g. audio=audioset.pth (repeatable; "
                        "none: plain fine-tuning)")
    p.add_argument("--out", metavar="DIR", help="run folder for checkpoints, metrics and plot")
    p.add_argument("--resume", metavar="RUN", help="continue a run: its folder or its resume.safetensors "
                   "(its stored settings are used; only --epochs and --device may be given with it)")
    p.add_argument("--force", action="store_true", help="start over in a folder that holds a run")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")

    d = p.add_argument_group("data")
    d.add_argument("--data", metavar="PATH", help="image folder (one sub-folder per class; train/ + val/ "
                   "inside are used as the split) or .npz with arrays x [N,C,H,W] and y [N]")
    d.add_argument("--val-data", metavar="PATH", help="separate validation folder or .npz")
    d.add_argument("--val-split", type=float, default=0.1, help="held-out fraction without --val-data")
    d.add_argument("--num-classes", type=int, help="classes of the new head (default: the target's head)")
    d.add_argument("--workers", type=int, default=0, help="data loader processes per rank; 0 loads in the main process")

    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, help=f"epochs in all (default: {_DEFAULT_EPOCHS}; with --resume: "
                   "the run's saved total, or extend the run to this many, recomputing the schedule)")
    o.add_argument("--batch-size", type=int, default=64, help="global batch per optimizer step")
    o.add_argument("--accum-steps", type=int, default=1, help="gradient accumulation steps")
    o.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    o.add_argument("--lambda-lr", type=float, help="learning rate of λ (default: --lr)")
    o.add_argument("--min-lr", type=float, default=1e-6, help="cosine schedule floor")
    o.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up before the cosine")
    o.add_argument("--weight-decay", type=float, default=0.05, help="off for biases, norms and λ")
    o.add_argument("--layer-decay", type=float, default=1.0,
                   help="layer-wise lr decay, 1 is off; the MAE / M2PT recipe for a pretrained ViT-B uses 0.65")
    o.add_argument("--clip-grad", type=float, help="clip the gradient norm to this value")
    o.add_argument("--label-smoothing", type=float, default=0.0, help="of the cross-entropy targets")
    o.add_argument("--drop-path", type=float, default=0.0, help="stochastic depth rate at the last block")
    o.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 autocast on GPU, fp32 on CPU")
    o.add_argument("--seed", type=int, default=0,
                   help="seed of the split, the batch order and every RNG (torch, Python, NumPy; "
                        "+ rank under torchrun)")
    o.add_argument("--device", help="cpu or cuda (default: cuda when available)")

    w = p.add_argument_group("pathways")
    w.add_argument("--mode", choices=("full", "probe"), default="full",
                   help="full fine-tune, or λ + head only (linear-probe style, BatchNorm head)")
    w.add_argument("--train-aux", action="store_true", help="train the auxiliary weights too (default: frozen)")
    w.add_argument("--lambda-kind", choices=("scalar", "channel"), default="scalar",
                   help="one λ per layer and aux, or one per output channel")
    w.add_argument("--layers", nargs="+", default=list(DEFAULT_LAYERS), metavar="LAYER",
                   help=f"linear layers in each block that get pathways (default: {' '.join(DEFAULT_LAYERS)})")
    return p


def _config(args: argparse.Namespace) -> TrainConfig:
    missing = [flag for flag, value in (("TARGET", args.target), ("--data", args.data), ("--out", args.out))
               if value is None]
    if missing:
        raise M2ptError(f"missing {', '.join(missing)} (or pass --resume RUN)")
    return TrainConfig(
        target=args.target, data=args.data, out_dir=args.out, aux=tuple(args.aux),
        val_data=args.val_data, val_split=args.val_split, num_classes=args.num_classes,
        epochs=_DEFAULT_EPOCHS if args.epochs is None else args.epochs, batch_size=args.batch_size,
        lr=args.lr, lambda_lr=args.lambda_lr, min_lr=args.min_lr, weight_decay=args.weight_decay,
        layer_decay=args.layer_decay, warmup_epochs=args.warmup_epochs, clip_grad=args.clip_grad,
        accum_steps=args.accum_steps,
        label_smoothing=args.label_smoothing, drop_path=args.drop_path, precision=args.precision,
        mode=args.mode, train_aux=args.train_aux, lambda_kind=args.lambda_kind, layers=tuple(args.layers),
        seed=args.seed, workers=args.workers, device=args.device,
    )


# What --resume takes besides the run: the rest comes from the run's stored settings.
_RESUME_OPTIONS = {"resume", "epochs", "device", "quiet", "verbose"}


def _given(argv: Sequence[str] | None) -> set[str]:
    """The options on the command line, told apart from defaults (a parse without defaults)."""
    probe = build_parser()
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def _check_request(args: argparse.Namespace, argv: Sequence[str] | None) -> None:
    """Refused before torch is imported: options --resume would ignore, missing inputs, an
    unwritable run folder."""
    if args.resume:
        ignored = sorted(_given(argv) - _RESUME_OPTIONS)
        if ignored:
            name = "TARGET" if ignored[0] == "target" else "--" + ignored[0].replace("_", "-")
            raise M2ptError(f"{name} does not apply with --resume: a resumed run keeps its stored settings "
                            "(only --epochs and --device change); start a new run with --out to change them")
        if file_kind(args.resume).kind == "missing":
            raise M2ptError("no such resume file or run folder", args.resume)
        return
    _config(args).check_files()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_request(args, argv)
    from m2pt_deploy.train import train

    if args.resume:
        result = train(resume=args.resume, epochs=args.epochs, device=args.device, progress=not args.quiet)
    else:
        result = train(_config(args), force=args.force, progress=not args.quiet)
    if os.environ.get("RANK", "0") != "0":
        return EXIT_OK  # under torchrun, rank 0 reports
    last = result.history[-1]
    if result.epochs_run == 0:
        print(f"nothing to train: the run has finished all {last['epoch']} epochs (pass --epochs N, more than "
              f"{last['epoch']}, to extend it); val acc {last['val_acc']:.4f} (best {result.best_val_acc:.4f})")
    else:
        this_call = f" ({result.epochs_run} in this call)" if result.epochs_run != last["epoch"] else ""
        print(f"trained {last['epoch']} epochs{this_call}: val acc {last['val_acc']:.4f} "
              f"(best {result.best_val_acc:.4f})")
    print(f"checkpoints: {result.last}  {result.best}")
    return EXIT_OK


def entrypoint() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    entrypoint()
