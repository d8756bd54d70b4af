"""The registry of target model families: register your own, look one up, recognise a checkpoint's.

Like timm's ``register_model``: a family registered from Python is used by every command
that runs in that process (merge, export, verify, serve, train). Built-in families are
registered when :mod:`m2pt_deploy.families` is imported, which Python does before any of its
modules (this one included) can be used. The table itself is ``base.FAMILIES``.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families.base import FAMILIES, ModelFamily, get_family

__all__ = ["detect_family", "family_names", "get_family", "register_family", "unregister_family"]


def register_family(family: ModelFamily, *, replace: bool = False) -> ModelFamily:
    """Make ``family`` known by its ``name``; families registered later are tried first when a
    checkpoint is recognised, so a user's family can claim keys a built-in one would also take."""
    if not isinstance(family, ModelFamily):
        raise TypeError(f"register_family takes a ModelFamily instance, got {type(family).__name__}")
    if family.name in FAMILIES and not replace:
        raise ValueError(f"a model family named {family.name!r} is already registered (pass replace=True)")
    FAMILIES.pop(family.name, None)
    FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> ModelFamily:
    """Forget a registered family (a test's, or one to be replaced); returns it."""
    try:
        return FAMILIES.pop(name)
    except KeyError:
        raise M2ptError(f"unknown model family {name!r} (known: {', '.join(FAMILIES)})") from None


def family_names() -> tuple[str, ...]:
    return tuple(FAMILIES)


def detect_family(state_dict: Mapping[str, Tensor]) -> ModelFamily:
    """The family whose checkpoints look like these vanilla-layout weights (latest registered first)."""
    for family in reversed(FAMILIES.values()):
        if family.recognizes(state_dict):
            return family
    sample = ", ".join(list(state_dict)[:3])
    raise M2ptError(f"cannot recognise the model family of these weights (keys: {sample}, ...); "
                    f"known families: {', '.join(FAMILIES)} (pass --family, or register yours)")

