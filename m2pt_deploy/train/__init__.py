"""Fine-tune a target ViT with multimodal pathways: ``train(TrainConfig(...))`` or ``m2pt-train``.

Modules, bottom up: ``data`` and ``sampling`` (what goes in, in which order), ``model``
(target + pathways + what is frozen), ``optim`` (parameter groups, schedule), ``state``
(resume files), ``distributed`` (torchrun), ``report`` (metrics, plot), ``loop`` (the run).
"""

from __future__ import annotations

from m2pt_deploy.train.config import TrainConfig
from m2pt_deploy.train.loop import BEST, LAST, RESUME, TrainResult, train

__all__ = ["BEST", "LAST", "RESUME", "TrainConfig", "TrainResult", "train"]
