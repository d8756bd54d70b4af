"""The package's layers, bottom to top, and the rule that data flows one way: no module imports
a higher layer, by an import statement or by a string naming it (``-c "from m2pt_deploy.cli..."``)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "m2pt_deploy"
# Same-numbered layers may not import each other either (except within themselves).
LAYERS: dict[str, int] = {
    "__init__": 0, "errors": 0, "fileio": 0, "filekind": 0, "cpu": 0, "heap": 0, "progress": 0,
    "vocabulary": 0, "request": 0, "extras": 0, "metadata": 0,
    "families": 1,
    "model": 2,
    "merge": 3,
    "inputs": 4,
    "train": 5,
    "runtime": 6,
    "export": 7,
    "verify": 8,
    "serving": 9,
    "bench": 10,
    "pipelines": 11,
    "cli": 12,
    "__main__": 13,
}
_NAME = re.compile(r"\bm2pt_deploy\.([a-z_0-9]+)")


def _layer_of(module: str) -> str:
    return module.split(".", 1)[0]


def _edges(path: Path) -> list[tuple[str, int]]:
    """``(top-level module named, line)`` for every import and every non-docstring string."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant) and isinstance(node.body[0].value.value, str)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("m2pt_deploy"):
            rest = node.module.removeprefix("m2pt_deploy").lstrip(".")
            names = [rest] if rest else [a.name for a in node.names]
            out += [(_layer_of(n), node.lineno) for n in names]
        elif isinstance(node, ast.Import):
            out += [(_layer_of(a.name.removeprefix("m2pt_deploy.")), node.lineno)
                    for a in node.names if a.name.startswith("m2pt_deploy.")]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            # metadata keys ("m2pt_deploy.precision") name no module: only known layers count
            out += [(m, node.lineno) for m in _NAME.findall(node.value) if m in LAYERS]
    return out


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_module_belongs_to_a_layer() -> None:
    unknown = {_layer_of(str(p.relative_to(PACKAGE).with_suffix("")).replace("/", ".")) for p in _modules()}
    assert unknown <= set(LAYERS), sorted(unknown - set(LAYERS))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_reaches_up(path: Path) -> None:
    own = _layer_of(str(path.relative_to(PACKAGE).with_suffix("")).replace("/", "."))
    upward = [f"line {line}: {own} -> {target}" for target, line in _edges(path)
              if target in LAYERS and target != own and LAYERS[target] >= LAYERS[own] and LAYERS[own] > 0]
    upward += [f"line {line}: {own} -> {target}" for target, line in _edges(path)
               if LAYERS[own] == 0 and target in LAYERS and LAYERS[target] > 0]
    assert not upward, upward


def test_the_check_sees_string_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text('"""m2pt_deploy.cli in a docstring is prose."""\n'
                     'CODE = "from m2pt_deploy.cli.export import main"\n')
    assert _edges(probe) == [("cli", 2)]
