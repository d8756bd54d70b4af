"""Everything a training run depends on, in one JSON-able value stored with its outputs."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.fileio import check_output_folder
from m2pt_deploy.filekind import file_kind, require_checkpoint
from m2pt_deploy.model.pathway_options import DEFAULT_LAYERS, LambdaKind

__all__ = ["Mode", "Precision", "TrainConfig"]

Precision = Literal["auto", "fp32", "bf16"]
# full fine-tuning, or λ + head only (the reference's linear-probe setting)
Mode = Literal["full", "probe"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A fine-tuning run. ``batch_size`` is the global batch of one optimizer step.

    ``aux`` holds ``(checkpoint path, modality or None)`` pairs; none means plain fine-tuning.
    ``lambda_lr`` defaults to ``lr``. ``precision="auto"`` is bf16 autocast on a GPU, fp32 on CPU.
    """

    target: str
    data: str
    out_dir: str
    aux: tuple[tuple[str, str | None], ...] = ()
    val_data: str | None = None
    val_split: float = 0.1
    num_classes: int | None = None
    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 256
    lr: float = 5e-4
    lambda_lr: float | None = None
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    layer_decay: float = 1.0
    warmup_epochs: float = 1.0
    clip_grad: float | None = None
    accum_steps: int = 1
    label_smoothing: float = 0.0
    drop_path: float = 0.0
    precision: Precision = "auto"
    mode: Mode = "full"
    train_aux: bool = False
    lambda_kind: LambdaKind = "scalar"
    layers: tuple[str, ...] = DEFAULT_LAYERS
    seed: int = 0
    workers: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.accum_steps >= 1, f"--accum-steps must be at least 1, got {self.accum_steps}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (0 < self.layer_decay <= 1, f"--layer-decay must be in (0, 1], got {self.layer_decay}"),
            (0 < self.val_split < 1, f"--val-split must be between 0 and 1, got {self.val_split}"),
            (self.mode in ("full", "probe"), f"mode must be 'full' or 'probe', got {self.mode!r}"),
            (self.precision in ("auto", "fp32", "bf16"), f"unknown precision {self.precision!r}"),
            (self.num_classes is None or self.num_classes >= 1,
             f"--num-classes must be at least 1, got {self.num_classes}"),
        ]
        for ok, message in checks:
            if not ok:
                raise M2ptError(message)

    def check_files(self) -> TrainConfig:
        """The target and aux checkpoints recognised, the data found and the run folder probed: a
        fresh run's inputs checked before anything is imported or read in full."""
        require_checkpoint(self.target)
        for path in (self.data, self.val_data):
            if path is not None and file_kind(path).kind == "missing":
                raise M2ptError("no such file or folder", path)
        for path, _ in self.aux:
            require_checkpoint(path)
        check_output_folder(self.out_dir)
        return self

    @property
    def effective_lambda_lr(self) -> float:
        return self.lr if self.lambda_lr is None else self.lambda_lr

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in fields}
        values["aux"] = tuple((str(p), m) for p, m in values.get("aux", ()))
        values["layers"] = tuple(values.get("layers", DEFAULT_LAYERS))
        return cls(**values)
