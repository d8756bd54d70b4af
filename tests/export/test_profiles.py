from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
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


@settings(deadline=None, max_examples=50)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30))
def test_build_script_paths_survive_any_file_name(name: str) -> None:
    """The script names its files relative to its own folder ("$HERE"/...); bash must read them back exactly."""
    profile = ShapeProfile("pixel_values", (1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))
    onnx_path, engine_path = Path(f"/d/{name}.onnx"), Path(f"/d/{name}.engine")
    script = build_commands(onnx_path, engine_path, BuildOptions("int8", profile))
    lines = script.split("\n")
    commands = [line for line in lines if line.startswith(("  trtexec", "  polygraphy"))]
    assert len(commands) == 4 and all('"$ONNX"' in c and '"$PARTIAL"' in c for c in commands)
    assignments = "\n".join(line for line in lines if line.startswith(("ONNX=", "ENGINE=")))
    here = shlex.quote(str(engine_path.parent.resolve()))
    out = subprocess.run(["bash", "-c", f'HERE={here}\n{assignments}\nprintf "%s\\0" "$ONNX" "$ENGINE"'],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split("\0")[:2] == [str(onnx_path.resolve()), str(engine_path.resolve())]
