"""The one rule for the head count, which no weight shows: flag, then the file, then a noted convention."""

from __future__ import annotations

import pytest

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families.heads import by_width, resolve_heads

SIZES = {768: (12, "timm's ViT-B")}


def _resolve(width: int, **kwargs) -> tuple[int, list[str]]:
    notes: list[str] = []
    heads = resolve_heads(width, **{"flag": None, "stated": None, "convention": by_width(width, SIZES),
                                    "title": "ViT", **kwargs}, notes=notes)
    return heads, notes


def test_a_convention_is_always_said_a_named_size_too() -> None:
    assert _resolve(768) == (12, ["12 heads: timm's ViT-B at 768 wide, not in the weights; pass --num-heads if not"])
    assert _resolve(128) == (2, ["2 heads: 64-wide heads assumed at 128 wide, not in the weights; "
                                 "pass --num-heads if not"])
    assert _resolve(64)[1] == ["1 head: 64-wide heads assumed at 64 wide, not in the weights; pass --num-heads if not"]


def test_the_flag_and_what_the_file_states_need_no_note() -> None:
    assert _resolve(128, flag=4) == (4, [])
    assert _resolve(128, stated=(8, "args.model 'x'")) == (8, [])
    assert _resolve(128, flag=8, stated=(8, "args.model 'x'")) == (8, [])
    assert _resolve(96, flag=3) == (3, [])  # no convention needed when the user says


@pytest.mark.parametrize(("width", "kwargs", "message"), [
    (128, {"flag": 3}, "--num-heads 3 does not divide the width 128"),
    (128, {"flag": 0}, "--num-heads 0 does not divide the width 128"),
    (128, {"flag": 4, "stated": (2, "the checkpoint's config")}, "--num-heads 4 contradicts the checkpoint's config "
                                                                  "(2 heads)"),
    (128, {"flag": 2, "stated": (1, "the checkpoint's config")}, "--num-heads 2 contradicts the checkpoint's config "
                                                                  "(1 head)"),
    (48, {"stated": (5, "the training args' num_heads")}, "the training args' num_heads says 5 heads, which do not "
                                                          "divide the width 48"),
    (96, {}, "the head count of a 96-wide ViT is not in the weights and no convention gives one: pass --num-heads"),
], ids=["not-dividing", "zero", "contradicts", "contradicts-one", "stated-not-dividing", "no-convention"])
def test_refusals_are_one_line_and_name_both_values(width: int, kwargs: dict, message: str) -> None:
    with pytest.raises(M2ptError) as e:
        _resolve(width, **kwargs)
    assert str(e.value) == message
