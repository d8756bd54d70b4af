"""Fine-tune a target ViT with multimodal pathways: ``train(TrainConfig(...))`` or ``m2pt-train``.

Modules, bottom up: ``data`` and ``sampling`` (what goes in, in which order), ``model``
(target + pathways + what is frozen), ``optim`` (parameter groups, schedule), ``state``
(resume files), ``distributed`` (torchrun), ``report`` (metrics, plot), ``loop`` (the run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from m2pt_deploy.train.config import TrainConfig

if TYPE_CHECKING:
    from m2pt_deploy.train.loop import BEST, LAST, RESUME, TrainResult, train

__all__ = ["BEST", "LAST", "RESUME", "TrainConfig", "TrainResult", "train"]

_FROM_LOOP = frozenset({"BEST", "LAST", "RESUME", "TrainResult", "train"})


def __getattr__(name: str) -> Any:
    # The loop (torch, timm) loads on first use: the config alone, all m2pt-train --help
    # needs, stays light.
    if name in _FROM_LOOP:
        from m2pt_deploy.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
