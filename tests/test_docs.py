"""The docs against the code: links resolve, named modules exist, no known-wrong layout survives."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", doc.read_text()):
        assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_modules_exist(doc: Path) -> None:
    for name in set(re.findall(r"`(m2pt_deploy(?:\.\w+)+)", doc.read_text())):
        first = name.split(".")[1]
        if importlib.util.find_spec(f"m2pt_deploy.{first}") is None:
            continue  # an ONNX metadata key (m2pt_deploy.precision, ...), not a module
        module, attr = name, None
        while True:
            try:
                found = importlib.import_module(module)
                break
            except ModuleNotFoundError:
                module, _, attr = module.rpartition(".")
                assert module, f"{doc.name} names {name}, which does not exist"
        assert attr is None or hasattr(found, attr), f"{doc.name} names {name}, which does not exist"


@pytest.mark.parametrize("doc", [*DOCS, ROOT / "m2pt_deploy" / "cli" / "export.py",
                                 ROOT / "m2pt_deploy" / "cli" / "common.py"], ids=lambda p: p.name)
def test_no_transposed_audio_layout(doc: Path) -> None:
    """AudioMAE's input is (1, 1024, 128), time x frequency; (1, 128, 1024) loads and is wrong."""
    text = doc.read_text()
    assert "--input-size 1 128 1024" not in text or "refused" in text.split("--input-size 1 128 1024")[1][:200]
