from __future__ import annotations

import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.onnx import parse_batch
from m2pt_deploy.export.profiles import ShapeProfile
from m2pt_deploy.export.tensorrt import BuildOptions, build_commands

batches = st.integers(min_value=-2, max_value=300)


@given(batches, batches, batches)
def test_profile_accepts_exactly_ordered_positive_batches(lo: int, opt: int, hi: int) -> None:
    valid = 1 <= lo <= opt <= hi
    try:
        profile = ShapeProfile("x", (lo, 3), (opt, 3), (hi, 3))
    except M2ptError:
        assert not valid
        return
    assert valid and profile.max_batch == hi


@given(st.integers(1, 64), st.integers(0, 64), st.integers(0, 64), st.integers(0, 100))
def test_check_batch_refuses_exactly_what_lies_outside(lo: int, d1: int, d2: int, n: int) -> None:
    profile = ShapeProfile("x", (lo,), (lo + d1,), (lo + d1 + d2,))
    inside = lo <= n <= lo + d1 + d2
    if inside:
        profile.check_batch(n)
    else:
        with pytest.raises(M2ptError, match=f"batch {n} is (above|below)"):
            profile.check_batch(n)


@given(st.from_regex(r"[1-9][0-9]{0,2}:[1-9][0-9]{0,2}:[1-9][0-9]{0,2}", fullmatch=True))
def test_parse_batch_and_profile_agree(text: str) -> None:
    lo, opt, hi = (int(v) for v in text.split(":"))
    if not lo <= opt <= hi:
        with pytest.raises(M2ptError, match="needs MIN <= OPT <= MAX"):
            parse_batch(text)
        return
    batch = parse_batch(text)
    assert ShapeProfile("x", (batch.min,), (batch.opt,), (batch.max,)).max_batch == hi


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30))
def test_command_lines_survive_any_file_name(name: str) -> None:
    profile = ShapeProfile("pixel_values", (1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))
    script = build_commands(f"/d/{name}.onnx", f"/d/{name}.engine", BuildOptions("int8", profile))
    commands = [line.split(") ", 1)[1].rsplit(" ;;", 1)[0] for line in script.splitlines()
                if line.startswith(("  trtexec", "  polygraphy"))]
    assert len(commands) == 4
    for command in commands:
        argv = shlex.split(command)
        assert f"--onnx=/d/{name}.onnx" in argv or f"/d/{name}.onnx" in argv
        assert f"--saveEngine=/d/{name}.engine" in argv or f"/d/{name}.engine" in argv
