"""Command lines live in ``cli/``: no other module builds an ``ArgumentParser`` (or re-implements
the error contract that :func:`m2pt_deploy.cli.common.run_main` applies)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "m2pt_deploy"
CLI = PACKAGE / "cli"


def parsers(path: Path) -> list[int]:
    """Lines of ``path`` that make an ``ArgumentParser`` (``argparse.ArgumentParser(...)`` or the bare name)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name == "ArgumentParser":
                lines.append(node.lineno)
    return lines


def test_no_argument_parser_outside_cli() -> None:
    found = {str(p.relative_to(PACKAGE)): parsers(p) for p in sorted(PACKAGE.rglob("*.py")) if CLI not in p.parents}
    assert {path: lines for path, lines in found.items() if lines} == {}


def test_the_check_sees_parsers(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import argparse\nfrom argparse import ArgumentParser\n"
                     "a = argparse.ArgumentParser(prog='x')\nb = ArgumentParser()\n")
    assert parsers(probe) == [3, 4]
    assert parsers(CLI / "engine_info.py")


def test_python_m_runs_a_command_by_its_module_name(tmp_path: Path, capsys, monkeypatch) -> None:
    """``python -m m2pt_deploy engine-info ...`` (what an engine's build script runs) is that cli module."""
    from m2pt_deploy.__main__ import commands, main

    monkeypatch.setattr(sys, "argv", ["python"])  # main() rewrites it for the command, as -m would

    assert {"engine-info", "export", "serve-bench", "verify"} <= set(commands()) and "common" not in commands()
    for argv in ([], ["no-such-command"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and "usage: python -m m2pt_deploy {bench," in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["engine-info", "sidecar", str(tmp_path / "none.engine"), "--onnx", "x.onnx", "--batch", "1",
              "--api-path", "strong-typing"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'none.engine'}: engine file not found\n"
