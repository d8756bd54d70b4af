"""The registry of target model families: register your own, look one up, recognise a checkpoint's.

Like timm's ``register_model``, a family registers itself where it is defined::

    @register_family(priority=10)  # tried before the generic ViT (priority 0)
    class DeiTFamily(ViTFamily):
        ...

and is then used by every command run in that process (merge, export, verify, serve, train).
The built-in families are the modules of this package, each registering itself when
:mod:`m2pt_deploy.families` imports it. When a checkpoint is recognised, families are tried by
``priority``, highest first, and among equal priorities the one registered last first, so a
more specific family (DeiT with its distillation token) claims its checkpoints before a generic
one (ViT) that would mis-read them, and a user's family can claim keys a built-in one would take.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeVar, overload

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families.base import FamilyOption, ModelFamily, ModelSpec

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["detect_family", "family_names", "family_of", "family_options", "get_family", "register_family",
           "unregister_family"]

F = TypeVar("F", bound=ModelFamily)


@dataclasses.dataclass(frozen=True)
class _Entry:
    family: ModelFamily
    priority: int
    order: int  # registration order: among equal priorities, the later is tried first


#: The registered families by name, in registration order.
_FAMILIES: dict[str, _Entry] = {}
_ORDER = itertools.count()


@overload
def register_family(family: F, *, priority: int = 0, replace: bool = False) -> F: ...
@overload
def register_family(family: type[F], *, priority: int = 0, replace: bool = False) -> type[F]: ...
@overload
def register_family(family: None = None, *, priority: int = 0,
                    replace: bool = False) -> Callable[[type[F]], type[F]]: ...


def register_family(family: ModelFamily | type[ModelFamily] | None = None, *, priority: int = 0,
                    replace: bool = False) -> object:
    """Make a family known by its ``name``, with the ``priority`` its checkpoints are recognised at.

    As a class decorator (``@register_family`` or ``@register_family(priority=10)``) it registers
    an instance of the class and returns the class; called with an instance it returns the instance.
    ``priority`` orders recognition: higher first; a family that recognises a special case of
    another's checkpoints (DeiT's of ViT's) needs a higher one. ``replace`` swaps a family of the
    same name for this one.
    """
    if family is None:
        return lambda cls: register_family(cls, priority=priority, replace=replace)
    if isinstance(family, type):
        if not issubclass(family, ModelFamily):
            raise TypeError(f"register_family takes a ModelFamily subclass, got {family.__name__}")
        register_family(family(), priority=priority, replace=replace)
        return family
    if not isinstance(family, ModelFamily):
        raise TypeError(f"register_family takes a ModelFamily instance, got {type(family).__name__}")
    if family.name in _FAMILIES and not replace:
        raise ValueError(f"a model family named {family.name!r} is already registered (pass replace=True)")
    _FAMILIES.pop(family.name, None)
    _FAMILIES[family.name] = _Entry(family, priority, next(_ORDER))
    return family


def unregister_family(name: str) -> ModelFamily:
    """Forget a registered family (a test's, or one to be replaced); returns it."""
    try:
        return _FAMILIES.pop(name).family
    except KeyError:
        raise _unknown(name) from None


def _unknown(name: str) -> M2ptError:
    return M2ptError(f"unknown model family {name!r} (known: {', '.join(_FAMILIES)})")


def get_family(name: str) -> ModelFamily:
    """The family registered as ``name``; an unknown name is a one-line error listing the known."""
    entry = _FAMILIES.get(name)
    if entry is None:
        raise _unknown(name)
    return entry.family


def family_of(spec: ModelSpec) -> ModelFamily:
    """The family that builds ``spec`` (a spec names its family; the registry holds it)."""
    return get_family(spec.family)


def family_names() -> tuple[str, ...]:
    return tuple(_FAMILIES)


def _by_priority() -> list[ModelFamily]:
    return [e.family for e in sorted(_FAMILIES.values(), key=lambda e: (-e.priority, -e.order))]


def family_options() -> dict[str, list[tuple[ModelFamily, FamilyOption]]]:
    """Every setting a registered family declares, by option name, with the families that take it
    (in registration order): what the command line makes its flags from."""
    out: dict[str, list[tuple[ModelFamily, FamilyOption]]] = {}
    for entry in _FAMILIES.values():
        for option in entry.family.options:
            out.setdefault(option.name, []).append((entry.family, option))
    return out


def detect_family(state_dict: Mapping[str, Tensor]) -> ModelFamily:
    """The family whose checkpoints look like these vanilla-layout weights (highest priority first)."""
    for family in _by_priority():
        if family.recognizes(state_dict):
            return family
    sample = ", ".join(list(state_dict)[:3])
    raise M2ptError(f"cannot recognise the model family of these weights (keys: {sample}, ...); "
                    f"known families: {', '.join(_FAMILIES)} (pass --family, or register yours)")
