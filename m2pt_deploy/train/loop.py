"""The training run: set up (fresh or resumed), epochs of train + validate, commit each epoch.

Outputs in ``out_dir``: ``last.safetensors`` and ``best.safetensors`` (the
:func:`~m2pt_deploy.model.checkpoint.save_checkpoint` format, ready for merge / export),
``resume.safetensors`` (optimizer, schedule, RNG), ``metrics.jsonl`` and ``curves.png``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families import ModelSpec, family_of
from m2pt_deploy.inputs.datasets import SizedDataset, batches, check_classes, load_data
from m2pt_deploy.model.build import build_unmerged
from m2pt_deploy.model.checkpoint import NOTES_KEY, PathwayInfo, load_checkpoint, recorded_notes, save_checkpoint
from m2pt_deploy.model.pathway import pathway_state_dict
from m2pt_deploy.progress import note
from m2pt_deploy.train import state as train_state
from m2pt_deploy.train.config import TrainConfig
from m2pt_deploy.train.distributed import Distributed
from m2pt_deploy.train.model import attach_pathways, blocks, build_target, load_aux, set_drop_path, set_trainable
from m2pt_deploy.train.optim import build_optimizer, lr_factor, set_lr
from m2pt_deploy.train.report import lambda_values, plot_history, write_jsonl
from m2pt_deploy.train.sampling import GlobalBatchSampler, ShardSampler, micro_batch_size

__all__ = ["LAST", "BEST", "RESUME", "TrainResult", "train"]

LAST, BEST, RESUME = "last.safetensors", "best.safetensors", "resume.safetensors"
METRICS, CURVES = "metrics.jsonl", "curves.png"
StepHook = Callable[[int], None]


@dataclasses.dataclass
class TrainResult:
    out_dir: Path
    last: Path
    best: Path
    history: list[dict[str, Any]]
    classes: tuple[str, ...]
    #: Epochs this call trained: 0 when a resumed run had already finished.
    epochs_run: int = 0

    @property
    def best_val_acc(self) -> float:
        return max(r["val_acc"] for r in self.history)


@dataclasses.dataclass
class _Run:
    config: TrainConfig
    dist: Distributed
    out: Path
    model: nn.Module
    spec: ModelSpec
    pathway: PathwayInfo | None
    classes: tuple[str, ...]
    train_set: SizedDataset
    val_set: SizedDataset
    epoch: int = 0
    step: int = 0
    best_acc: float = -1.0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: What the target's reading took from its args or assumed, recorded in every checkpoint.
    notes: tuple[str, ...] = ()


def train(
    config: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    epochs: int | None = None,
    device: str | None = None,
    force: bool = False,
    progress: bool = True,
    on_step: StepHook | None = None,
) -> TrainResult:
    """Fine-tune ``config.target`` with pathways from ``config.aux``, or continue ``resume``.

    Give exactly one of ``config`` and ``resume`` (a run folder or its ``resume.safetensors``,
    whose stored config is used). ``epochs`` extends a resumed run to that many epochs in all;
    the warm-up + cosine schedule is then recomputed for the new total (see :func:`_extended`).
    ``device`` overrides the config's; ``on_step(step)`` runs after every optimizer step (tests
    use it to kill a run at a chosen point).

    A fresh run that fails before its first epoch is committed removes the run folder if this
    call created it; a folder that existed before is left as it was.
    """
    if (config is None) == (resume is None):
        raise M2ptError("give a training config or a resume file, not both or neither")
    if epochs is not None and resume is None:
        raise M2ptError("epochs= extends a resumed run; a new run takes its epochs from the config")
    if config is not None:
        config.check_files()
    resume_file = _resume_file(resume) if resume is not None else None
    state = train_state.read_resume(resume_file) if resume_file is not None else None
    if state is not None and resume_file is not None:
        config = _extended(TrainConfig.from_dict(state[1]["config"]), state[1], epochs, resume_file)
    assert config is not None
    dist = Distributed.from_env(device=device or config.device)
    created: Path | None = None
    try:
        if resume_file is not None and state is not None:
            run, tensors, info = _resume(resume_file, config, state, dist), state[0], state[1]
        else:
            created = _prepare_out(Path(config.out_dir), force=force, dist=dist)
            run, tensors, info = _fresh(config, dist), None, None
        start = int(info["epoch"]) if info is not None else 0
        result = _fit(run, tensors, info, progress=progress, on_step=on_step)
        result = dataclasses.replace(result, epochs_run=int(result.history[-1]["epoch"]) - start)
        # Every rank reaches the end before any tears its process group down: a rank that
        # destroyed its gloo group while rank 0 was still writing was seen to abort (SIGABRT).
        dist.barrier()
        return result
    except BaseException:
        if created is not None and not (Path(config.out_dir) / RESUME).exists():
            # Nothing committed to a folder this call made: leave no empty run folder behind.
            shutil.rmtree(created, ignore_errors=True)
        raise
    finally:
        dist.close()


def _resume_file(resume: str | Path) -> Path:
    """``resume`` itself, or the resume file in the run folder ``resume``."""
    path = Path(resume)
    if not path.is_dir():
        return path
    if not (path / RESUME).is_file():
        raise M2ptError(f"run folder without {RESUME} (looked for {path / RESUME}; it is written at the "
                        "end of every epoch)", path)
    return path / RESUME


def _extended(config: TrainConfig, info: dict[str, Any], epochs: int | None, path: Path) -> TrainConfig:
    """The saved config, with ``epochs`` as the new total when given.

    The schedule is a function of the step and the total (:func:`~m2pt_deploy.train.optim.lr_factor`),
    so a new total recomputes it, as timm's scheduler and MAE's ``adjust_learning_rate`` do when
    a run resumes with a larger ``--epochs``: warm-up is not repeated, and the lr continues from
    the new cosine's value at the resumed step (for a finished run, a jump up from ``min_lr``).
    """
    if epochs is None:
        return config
    if epochs < info["epoch"]:
        raise M2ptError(f"--epochs {epochs} is fewer than the {info['epoch']} epochs this run has "
                        "already done; give a larger total to extend it", path)
    return dataclasses.replace(config, epochs=epochs)


def _prepare_out(out: Path, *, force: bool, dist: Distributed) -> Path | None:
    """Check and create the run folder on rank 0 (the only writer); the topmost folder created.

    The check runs before any work, and a refusal there ends every rank, none is left waiting.
    """
    created: list[Path | None] = [None]

    def prepare() -> None:
        if out.exists() and not out.is_dir():
            raise M2ptError("output is a file; give a folder", out)
        if (out / RESUME).exists() and not force:
            raise M2ptError(f"already holds a run; pass --resume {out} to continue it "
                            "or --force to start over", out)
        missing = [p for p in (out, *out.parents) if not p.exists()]
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise M2ptError(f"cannot create the run folder ({e.strerror or e})", out) from e
        created[0] = missing[-1] if missing else None

    dist.on_main(prepare)
    return created[0]


def _fresh(config: TrainConfig, dist: Distributed) -> _Run:
    # timm's recipe: seed + rank, so that ranks draw different augmentations and drop-path masks
    # (DDP starts every rank from rank 0's weights, whatever each rank initialised).
    train_state.seed_all(config.seed + dist.rank)
    target = load_checkpoint(config.target)
    if target.notes and dist.is_main:  # the target's reading: nothing it assumed goes unsaid
        for text in target.notes:
            note(text)
    split = load_data(config.data, target.spec, val_data=config.val_data, val_split=config.val_split,
                      seed=config.seed)
    head = target.spec.num_classes
    num_classes = config.num_classes or head or len(split.classes)
    check_classes(split.classes, num_classes, config.data)
    model, spec = build_target(target, num_classes=num_classes, probe_head=config.mode == "probe")
    auxes = load_aux(config.aux)
    pathway = attach_pathways(model, auxes, family=family_of(spec), layers=config.layers,
                              lambda_kind=config.lambda_kind, train_aux=config.train_aux)
    return _Run(config, dist, Path(config.out_dir), model, spec, pathway, split.classes, split.train, split.val,
                notes=tuple(recorded_notes(target)))


def _resume(path: Path, config: TrainConfig, state: tuple[dict[str, Tensor], dict[str, Any]],
            dist: Distributed) -> _Run:
    info = state[1]
    out = path.parent
    dist.on_main(lambda: _recover(out, info, path))
    ckpt = load_checkpoint(out / LAST)
    model = build_unmerged(ckpt, train_aux=config.train_aux)
    split = load_data(config.data, ckpt.spec, val_data=config.val_data, val_split=config.val_split,
                      seed=config.seed)
    classes = tuple(ckpt.extra.get("labels", split.classes))
    check_classes(split.classes, ckpt.spec.num_classes, config.data)
    return _Run(config, dist, out, model, ckpt.spec, ckpt.pathway, classes, split.train, split.val,
                epoch=info["epoch"], step=info["step"], best_acc=info["best_acc"], history=info["history"],
                notes=tuple(recorded_notes(ckpt)))


def _recover(out: Path, info: dict[str, Any], state: Path) -> None:
    train_state.recover(out / LAST, info, state)
    # A kill during a write leaves atomic_output's temporary file (never the file itself).
    for name in (LAST + ".pending", LAST, BEST, RESUME, METRICS, CURVES):
        for tmp in out.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _loaders(run: _Run) -> tuple[DataLoader, DataLoader, GlobalBatchSampler]:
    c, d = run.config, run.dist
    micro_batch_size(c.batch_size, d.world_size, c.accum_steps)
    sampler = GlobalBatchSampler(len(run.train_set), c.batch_size, rank=d.rank, world_size=d.world_size,
                                 seed=c.seed)
    val_sampler = ShardSampler(len(run.val_set), c.eval_batch_size, rank=d.rank, world_size=d.world_size)
    pin = d.device.type == "cuda"
    return (DataLoader(run.train_set, batch_sampler=sampler, num_workers=c.workers, pin_memory=pin),
            DataLoader(run.val_set, batch_sampler=val_sampler, num_workers=c.workers, pin_memory=pin), sampler)


def _autocast(run: _Run) -> contextlib.AbstractContextManager:
    p = run.config.precision
    bf16 = p == "bf16" or (p == "auto" and run.dist.device.type == "cuda")
    return torch.autocast(device_type=run.dist.device.type, dtype=torch.bfloat16, enabled=bf16)


def _fit(run: _Run, tensors: dict[str, Tensor] | None, info: dict[str, Any] | None, *,
         progress: bool, on_step: StepHook | None) -> TrainResult:
    c, d = run.config, run.dist
    family = family_of(run.spec)
    set_drop_path(run.model, c.drop_path, family)
    set_trainable(run.model, c.mode, train_aux=c.train_aux, head=family.head)
    core = run.model.to(d.device)
    optimizer = build_optimizer(core, lr=c.lr, lambda_lr=c.effective_lambda_lr, weight_decay=c.weight_decay,
                                layer_decay=c.layer_decay, depth=len(blocks(core, family)))
    if tensors is not None and info is not None:
        train_state.load_optimizer(optimizer, tensors, info["optimizer"])
        _restore_rng(tensors, d, seed=c.seed)
    model: nn.Module = core
    if d.enabled:
        model = DistributedDataParallel(core, device_ids=[d.device] if d.device.type == "cuda" else None)
    train_loader, val_loader, sampler = _loaders(run)
    steps_per_epoch = len(sampler)
    schedule = {"warmup_steps": round(c.warmup_epochs * steps_per_epoch),
                "total_steps": c.epochs * steps_per_epoch, "min_ratio": c.min_lr / c.lr}
    criterion = nn.CrossEntropyLoss(label_smoothing=c.label_smoothing)
    trainable = [p for p in core.parameters() if p.requires_grad]
    while run.epoch < c.epochs:
        sampler.set_epoch(run.epoch)
        t0 = time.perf_counter()
        train_loss, train_acc, seen = _train_epoch(run, model, optimizer, train_loader, criterion, trainable,
                                                   schedule, progress=progress, on_step=on_step)
        elapsed = time.perf_counter() - t0
        val_loss, val_acc = _evaluate(run, model, val_loader, criterion)
        run.epoch += 1
        lr = max(g["lr"] for g in optimizer.param_groups if g["name"] != "lambda")
        record = {"epoch": run.epoch, "step": run.step, "lr": lr,
                  "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                  "val_acc": val_acc, "images_per_s": seen / elapsed, "epoch_s": elapsed,
                  "lambda": lambda_values(core)}
        run.history.append(record)
        _save_epoch(run, core, optimizer, record)
        if progress and d.is_main:
            _print_epoch(record, c.epochs)
    aux_names = [a["modality"] for a in run.pathway.aux] if run.pathway else []
    d.on_main(lambda: plot_history(run.out / CURVES, run.history, aux_names=aux_names))
    return TrainResult(run.out, run.out / LAST, run.out / BEST, run.history, run.classes)


def _micro_batches(x: Tensor, y: Tensor, n: int) -> Iterator[tuple[int, Tensor, Tensor]]:
    yield from ((i, xm, ym) for i, (xm, ym) in enumerate(zip(x.chunk(n), y.chunk(n), strict=True)))


def _train_epoch(run: _Run, model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
                 criterion: nn.Module, trainable: Sequence[nn.Parameter], schedule: dict[str, Any], *,
                 progress: bool, on_step: StepHook | None) -> tuple[float, float, int]:
    from tqdm import tqdm

    c, d = run.config, run.dist
    model.train()
    totals = torch.zeros(3, dtype=torch.float64)
    t0 = time.perf_counter()
    bar = tqdm(batches(loader), total=len(loader), desc=f"epoch {run.epoch + 1}/{c.epochs}",
               # None: tqdm turns itself off when stderr is no terminal (CI logs get epoch lines only)
               disable=None if (progress and d.is_main) else True, leave=False, dynamic_ncols=True)
    for x, y in bar:
        set_lr(optimizer, lr_factor(run.step, **schedule))
        x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
        for i, xm, ym in _micro_batches(x, y, c.accum_steps):
            sync = i == c.accum_steps - 1 or not d.enabled
            no_sync = contextlib.nullcontext() if sync else cast(DistributedDataParallel, model).no_sync()
            with no_sync, _autocast(run):
                logits = model(xm)
                loss = criterion(logits.float(), ym)
                (loss / c.accum_steps).backward()
            totals += torch.tensor([loss.item() * len(ym), (logits.argmax(-1) == ym).sum().item(), len(ym)],
                                   dtype=torch.float64)
        if c.clip_grad:
            torch.nn.utils.clip_grad_norm_(trainable, c.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        run.step += 1
        if progress and d.is_main:
            rate = totals[2].item() * d.world_size / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{totals[0] / totals[2]:.4f}", acc=f"{totals[1] / totals[2]:.3f}",
                            img_s=f"{rate:.0f}")
        if on_step is not None:
            on_step(run.step)
    loss_sum, correct, n = d.sum(totals.tolist())
    return loss_sum / n, correct / n, int(n)


@torch.no_grad()
def _evaluate(run: _Run, model: nn.Module, loader: DataLoader, criterion: nn.Module) -> tuple[float, float]:
    d = run.dist
    model.eval()
    totals = [0.0, 0.0, 0.0]
    for x, y in batches(loader):
        x, y = x.to(d.device), y.to(d.device)
        with _autocast(run):
            logits = model(x).float()
        totals[0] += criterion(logits, y).item() * len(y)
        totals[1] += (logits.argmax(-1) == y).sum().item()
        totals[2] += len(y)
    loss_sum, correct, n = d.sum(totals)
    return loss_sum / n, correct / n


def _gathered_rng(d: Distributed) -> dict[str, Tensor]:
    return {f"rng.{rank}.{name}": t for name, value in train_state.get_rng_state().items()
            for rank, t in enumerate(d.gather(value))}


def _restore_rng(tensors: dict[str, Tensor], d: Distributed, *, seed: int) -> None:
    prefix = f"rng.{d.rank}."
    mine = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if mine:
        train_state.set_rng_state(mine)
    else:
        # A different number of processes than the saved run: no stream to continue.
        train_state.seed_all(seed + d.rank)


def _save_epoch(run: _Run, core: nn.Module, optimizer: torch.optim.Optimizer, record: dict[str, Any]) -> None:
    rng = _gathered_rng(run.dist)
    run.dist.on_main(lambda: _write_epoch(run, core, optimizer, record, rng))


def _write_epoch(run: _Run, core: nn.Module, optimizer: torch.optim.Optimizer, record: dict[str, Any],
                 rng: dict[str, Tensor]) -> None:
    extra = {"labels": list(run.classes), "training": run.config.to_dict(), "metrics": record,
             "epoch": run.epoch, **({NOTES_KEY: list(run.notes)} if run.notes else {})}
    weights = pathway_state_dict(core)

    def write(path: Path) -> None:
        save_checkpoint(path, weights, run.spec, pathway=run.pathway, extra=extra, force=True)

    if record["val_acc"] > run.best_acc:
        run.best_acc = record["val_acc"]
        write(run.out / BEST)
    opt_tensors, opt_info = train_state.optimizer_state(optimizer)
    info = {"config": run.config.to_dict(), "epoch": run.epoch, "step": run.step,
            "best_acc": run.best_acc, "history": run.history, "optimizer": opt_info,
            "world_size": run.dist.world_size}
    train_state.commit(run.out / LAST, run.out / RESUME, write, {**opt_tensors, **rng}, info)
    write_jsonl(run.out / METRICS, run.history)


def _print_epoch(r: dict[str, Any], epochs: int) -> None:
    from tqdm import tqdm

    tqdm.write(f"epoch {r['epoch']}/{epochs}  train loss {r['train_loss']:.4f} acc {r['train_acc']:.3f}  "
               f"val loss {r['val_loss']:.4f} acc {r['val_acc']:.3f}  {r['images_per_s']:.0f} img/s")
