"""The attention head count, which no weight shows: ``qkv`` is (3·width, width) at any head count.

So it comes, in this order, from ``--num-heads`` (checked against the width and against the file),
from what the file states (a training ``args.model`` name, our config, a Point-MAE config), or
from a family's named convention, which is then said in a note. With no convention for the
width the user is asked: a wrong guess loads, exports and verifies against itself, silently.
"""

from __future__ import annotations

from collections.abc import Mapping

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families.base import FamilyOption

__all__ = ["HEAD_WIDTH", "NUM_HEADS", "HeadCountUnknown", "Stated", "by_width", "resolve_heads"]

#: ``--num-heads``: every family of attention blocks declares this one option (one flag, one text).
NUM_HEADS = FamilyOption("num_heads", "attention heads, which no weight shows (default: what the file states, "
                                      "else a convention, noted)")

#: The head width of every standard ViT size (timm's, MAE's, VideoMAE V2's): the fallback convention.
HEAD_WIDTH = 64

#: A head count the file states, and where: ``(6, "args.model 'vit_small_patch16'")``.
Stated = tuple[int, str]


class HeadCountUnknown(M2ptError):
    """No flag, no statement and no convention: the user must say. Its own type so that callers
    that never use the head count (an aux model lends only its weights) can tell it apart."""


def by_width(width: int, sizes: Mapping[int, tuple[int, str]]) -> Stated | None:
    """The convention for ``width``: a named standard size (``sizes``: width -> (heads, name)),
    else 64-wide heads where the width divides into them, else none."""
    if width in sizes:
        heads, name = sizes[width]
        return heads, f"{name} at {width} wide"
    if width % HEAD_WIDTH == 0:
        return width // HEAD_WIDTH, f"{HEAD_WIDTH}-wide heads assumed at {width} wide"
    return None


def resolve_heads(width: int, *, flag: int | None, stated: Stated | None, convention: Stated | None,
                  title: str, notes: list[str]) -> int:
    """The head count: ``flag`` (--num-heads), else ``stated``, else ``convention`` (noted).

    Args:
        width: the embedding width the weights show.
        flag: the user's --num-heads; refused unless it divides ``width`` and agrees with ``stated``.
        stated: ``(heads, where)`` when the file (or the user's --arch) names a head count.
        convention: ``(heads, why)`` the family assumes at this width, or None when nothing does.
        title: the family, for the refusal.
        notes: where the assumption is said.
    """
    if flag is not None:
        if flag < 1 or width % flag:
            raise M2ptError(f"--num-heads {flag} does not divide the width {width}")
        if stated is not None and stated[0] != flag:
            raise M2ptError(f"--num-heads {flag} contradicts {stated[1]} ({_count(stated[0])})")
        return flag
    if stated is not None:
        if stated[0] < 1 or width % stated[0]:
            raise M2ptError(f"{stated[1]} says {_count(stated[0])}, which do not divide the width {width}")
        return stated[0]
    if convention is None:
        raise HeadCountUnknown(f"the head count of a {width}-wide {title} is not in the weights and no "
                               "convention gives one: pass --num-heads")
    notes.append(f"{_count(convention[0])}: {convention[1]}, not in the weights; pass --num-heads if not")
    return convention[0]


def _count(heads: int) -> str:
    return f"{heads} head{'' if heads == 1 else 's'}"
