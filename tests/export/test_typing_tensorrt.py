"""The TensorRT-facing modules type-check against TensorRT's API, without TensorRT installed."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRT_MODULES = ["m2pt_deploy/export/tensorrt.py", "m2pt_deploy/verify/tensorrt.py"]
# `make` installs the published stubs here (--no-deps: they require the real wheels).
PUBLISHED_STUBS = Path(sys.prefix) / "trt-stubs"


def mypy(*args: str, mypy_path: Path | None = None, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MYPYPATH": str(mypy_path)} if mypy_path else dict(os.environ)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(cache), "--follow-imports=silent", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for the module: torch and numpy are analysed once, not per run."""
    return tmp_path_factory.mktemp("mypy-cache")


def test_trt_modules_pass_mypy_against_the_documented_api(cache: Path) -> None:
    out = mypy(*TRT_MODULES, cache=cache)
    assert out.returncode == 0, out.stdout + out.stderr


def test_stubs_catch_calls_to_apis_that_do_not_exist(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import tensorrt as trt\n"
        "def f(config: trt.IBuilderConfig) -> None:\n"
        "    config.set_memory_pool_limt(trt.MemoryPoolType.WORKSPACE, 1)\n"
        "    config.set_flag(trt.BuilderFlag.FP16X)\n"
    )
    out = mypy("--ignore-missing-imports", str(probe), mypy_path=ROOT / "typings", cache=tmp_path / "cache")
    assert out.returncode == 1
    assert 'has no attribute "set_memory_pool_limt"' in out.stdout
    assert 'has no attribute "FP16X"' in out.stdout


@pytest.mark.skipif(not PUBLISHED_STUBS.is_dir() and not os.environ.get("CI"),
                    reason=f"published tensorrt-stubs not installed at {PUBLISHED_STUBS} (make installs them)")
def test_trt_modules_pass_mypy_against_the_published_stubs(tmp_path: Path, cache: Path) -> None:
    assert PUBLISHED_STUBS.is_dir(), f"CI must install tensorrt-stubs into {PUBLISHED_STUBS}"
    stubs = tmp_path / "stubs"
    shutil.copytree(PUBLISHED_STUBS, stubs)
    for pyi in stubs.rglob("*.pyi"):
        pyi.write_text(repair_stub(pyi.read_text()))
    out = mypy("--ignore-missing-imports", *TRT_MODULES, mypy_path=stubs, cache=cache)
    ours = [line for line in out.stdout.splitlines() if line.startswith("m2pt_deploy/")]
    assert not ours, "\n".join(ours)
    # The generated stubs have type errors of their own; seeing them proves mypy read these
    # stubs and not typings/.
    assert any(line.startswith(str(stubs)) for line in out.stdout.splitlines()), out.stdout[:2000]
    assert "error" not in out.stderr


def repair_stub(text: str) -> str:
    """Make the generated tensorrt-stubs 10.13.0.35.1 parse.

    pybind11-stubgen wrote a parameter named ``in`` (a keyword) in 7 plugin methods and a
    parameter without a default after defaulted ones in ``add_scale_nd``. Nothing else is
    changed; type errors inside the stubs themselves are not ours to fix and are ignored.
    """
    text = re.sub(r"([(,] *)in: ", r"\1in_: ", text)
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*def \w+\()(.*)(\) -> .*:\s*)$", line)
        if m:
            lines[i] = m.group(1) + _default_trailing(m.group(2)) + m.group(3)
    out = "\n".join(lines) + "\n"
    ast.parse(out)
    return out


def _default_trailing(params: str) -> str:
    parts, depth, current = [], 0, ""
    for ch in params:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    seen_default = False
    for k, part in enumerate(parts):
        if "=" in part:
            seen_default = True
        elif seen_default and part.strip() and not part.strip().startswith("*"):
            parts[k] = part + " = ..."
    return ",".join(parts)
