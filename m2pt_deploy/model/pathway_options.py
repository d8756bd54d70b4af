"""What a pathway attaches to and how λ is shaped: the words ``pathway.py`` and the command line
share, in a module without torch so that ``m2pt-train --help`` can show them at once."""

from __future__ import annotations

from typing import Literal

__all__ = ["DEFAULT_LAYERS", "LambdaKind"]

# The linear layers of each block the M2PT reference code gives pathways.
DEFAULT_LAYERS: tuple[str, ...] = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
LambdaKind = Literal["scalar", "channel"]
