"""The metadata schema: every ``m2pt_deploy.*`` key is spelled in ``m2pt_deploy/metadata.py`` only,
and its values are written and read back as the exporter and the server expect."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import onnx
import pytest

from m2pt_deploy.metadata import (
    INT8_TARGET_KEY,
    KEYS,
    PATHWAY_KEY,
    PRECISION_KEY,
    decode_metadata,
    encode_metadata,
    read_metadata,
)

PACKAGE = Path(__file__).parents[1] / "m2pt_deploy"
SCHEMA = PACKAGE / "metadata.py"
# Names under m2pt_deploy that are modules ("m2pt_deploy.serving" as a logger, "-m m2pt_deploy.cli.serve").
_MODULES = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if p.is_dir()}
_DOTTED = re.compile(r"\bm2pt_deploy\.([a-z_0-9]+)")


def _strings(path: Path) -> list[tuple[str, int]]:
    """Every string constant but docstrings (prose may name a key), f-string parts included."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant) and isinstance(node.body[0].value.value, str)}
    return [(node.value, node.lineno) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def spelled_keys(path: Path) -> list[str]:
    """``line N: key`` for each metadata key written out in ``path``: a schema key, or any
    ``m2pt_deploy.<name>`` where no module is called ``name``."""
    known = [re.compile(re.escape(key) + r"(?![a-z_0-9])") for key in KEYS]
    found = []
    for text, line in _strings(path):
        found += [f"line {line}: {m.group(0)}" for pattern in known for m in pattern.finditer(text)]
        found += [f"line {line}: m2pt_deploy.{name}" for name in _DOTTED.findall(text) if name not in _MODULES]
    return sorted(set(found))


@pytest.mark.parametrize("path", sorted(set(PACKAGE.rglob("*.py")) - {SCHEMA}),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_key_is_spelled_outside_the_schema(path: Path) -> None:
    assert spelled_keys(path) == []


def test_the_check_sees_keys_in_code_and_messages(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text('"""Reads ``m2pt_deploy.precision``: prose."""\n'
                     'log = "m2pt_deploy.serving"\n'
                     'a = meta.get("m2pt_deploy.precision")\n'
                     'b = f"no m2pt_deploy.input metadata in {name}"\n'
                     'c = "m2pt_deploy.model.pathway"\n'
                     'd = "m2pt_deploy.made_up"\n')
    assert spelled_keys(probe) == ["line 3: m2pt_deploy.precision", "line 4: m2pt_deploy.input",
                                   "line 5: m2pt_deploy.model.pathway", "line 6: m2pt_deploy.made_up"]


def test_a_key_is_its_string() -> None:
    assert PRECISION_KEY == "m2pt_deploy.precision" and f"({PRECISION_KEY})" == "(m2pt_deploy.precision)"
    assert PATHWAY_KEY == "m2pt_deploy.model.pathway"
    assert len(set(KEYS)) == len(KEYS)


def test_values_round_trip_through_the_proto() -> None:
    proto = onnx.ModelProto()
    proto.metadata_props.add(key="other.tool", value="not json")
    PRECISION_KEY.set(proto, "fp16")
    PRECISION_KEY.set(proto, "int8")  # replaced, not added
    INT8_TARGET_KEY.set(proto, {"weight_bits": 7, "target": "avx2"})
    assert [(p.key, p.value) for p in proto.metadata_props] == [
        ("other.tool", "not json"), ("m2pt_deploy.precision", '"int8"'),
        ("m2pt_deploy.int8_target", '{"target": "avx2", "weight_bits": 7}')]
    meta = read_metadata(proto)
    assert PRECISION_KEY.get(meta) == "int8" and INT8_TARGET_KEY.get(meta) == {"target": "avx2", "weight_bits": 7}
    assert PATHWAY_KEY.get(meta) is None and meta["other.tool"] == "not json"
    assert PRECISION_KEY.is_in(proto) and not PATHWAY_KEY.is_in(proto)
    assert decode_metadata(encode_metadata(dict([PRECISION_KEY.field("bf16")]))) == {"m2pt_deploy.precision": "bf16"}
