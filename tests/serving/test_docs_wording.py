"""docs/serving.md's refusal table quotes the server: each example message is one the server's own
code can produce (its format string, with the values filled in), answered with the documented status."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVING = ROOT / "m2pt_deploy" / "serving"
DOC = ROOT / "docs" / "serving.md"
# The calls that answer a request with an error: (message argument, status argument, default status).
_ERRORS = {"ProtocolError": (0, 1, 400), "error_response": (0, 1, None)}


def _pattern(node: ast.expr, constants: dict[str, str]) -> str | None:
    """A format string as a regex: its literal text, and ``.+`` for each value filled in."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.escape(node.value)
    if isinstance(node, ast.Name) and node.id in constants:
        return re.escape(constants[node.id])
    if isinstance(node, ast.JoinedStr):
        return "".join(re.escape(v.value) if isinstance(v, ast.Constant) else ".+" for v in node.values)
    return None


def server_messages() -> list[tuple[str, int | None, str]]:
    """(regex, HTTP status, where) for every error message the serving code writes."""
    found = []
    for path in sorted(SERVING.glob("*.py")):
        tree = ast.parse(path.read_text())
        constants = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                     and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
                     for t in n.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            name = getattr(node.func, "id", getattr(node.func, "attr", None)) if isinstance(node, ast.Call) else None
            if name not in _ERRORS or not node.args:  # type: ignore[union-attr]
                continue
            message, status_at, default = _ERRORS[name]
            pattern = _pattern(node.args[message], constants)  # type: ignore[union-attr]
            status_node = next((k.value for k in node.keywords if k.arg == "status"), None)  # type: ignore[union-attr]
            if status_node is None and len(node.args) > status_at:  # type: ignore[union-attr]
                status_node = node.args[status_at]  # type: ignore[union-attr]
            status = status_node.value if isinstance(status_node, ast.Constant) else default
            if pattern is not None:
                found.append((pattern, status, f"{path.name}:{node.lineno}"))
    return found


def documented_refusals() -> list[tuple[str, int, str]]:
    """(example message, status, row) from the Refusals table."""
    text = DOC.read_text()
    table = text.split("**Refusals.**", 1)[1].split("\n\n", 2)[1]
    rows = []
    for line in table.splitlines()[2:]:
        what, code, example = (cell.strip() for cell in line.strip("|").rsplit("|", 2))
        (message,) = re.findall(r"`([^`]+)`", example)
        rows.append((message, int(re.match(r"\d+", code)[0]), what))  # type: ignore[index]
    return rows


def test_the_table_and_the_messages_are_found() -> None:
    rows = documented_refusals()
    assert len(rows) >= 15 and all(400 <= status < 600 for _, status, _ in rows)
    messages = server_messages()
    assert any(where.startswith("images.py") for _, _, where in messages)  # _UNREADABLE, a named constant
    assert any(status == 413 for _, status, _ in messages)


@pytest.mark.parametrize("message, status, what", documented_refusals(), ids=lambda v: str(v)[:60])
def test_documented_message_is_the_servers(message: str, status: int, what: str) -> None:
    matches = [(s, where) for pattern, s, where in server_messages() if re.fullmatch(pattern, message)]
    assert matches, f"docs/serving.md ({what}): no message in m2pt_deploy/serving reads {message!r}"
    assert any(s in (status, None) for s, _ in matches), \
        f"docs/serving.md ({what}): {message!r} is answered with {sorted({s for s, _ in matches})}, not {status}"
