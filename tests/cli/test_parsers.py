"""Command lines live in ``cli/``: no other module builds an ``ArgumentParser`` (or re-implements
the error contract that :func:`m2pt_deploy.cli.common.run_main` applies)."""

from __future__ import annotations

import ast
from pathlib import Path

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
