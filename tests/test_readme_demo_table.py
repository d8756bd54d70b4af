"""The README's demo table is what scripts/readme_demo_table.py renders from the committed demo
reports (docs/bench/demo-seed-N.json), and the script catches and mends a stale table."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import ModuleType

import pytest

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
REPORTS = sorted((ROOT / "docs" / "bench").glob("demo-seed-*.json"))


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script("readme_demo_table")


def _report(seed: int, with_: tuple[float, float], without: tuple[float, float]) -> dict:
    return {"seed": seed, "epochs": 30, "torch": "2.x", "verified": True,
            "pathway": {"final_val_acc": with_[0], "best_val_acc": with_[1]},
            "baseline": {"final_val_acc": without[0], "best_val_acc": without[1]}}


def test_the_readme_table_is_rendered_from_the_committed_reports(script: ModuleType) -> None:
    assert [json.loads(p.read_text())["seed"] for p in REPORTS] == [0, 1, 2]
    rendered = script.render([script.load_report(p) for p in REPORTS])
    assert script.current_block((ROOT / "README.md").read_text()) == rendered
    assert "| 0 (the demo's default) |" in rendered


def test_docs_training_quotes_the_seed_0_run(script: ModuleType) -> None:
    report = script.load_report(ROOT / "docs" / "bench" / "demo-seed-0.json")
    text = (ROOT / "docs" / "training.md").read_text()
    for name, run in (("with audio pathway", report["pathway"]), ("without pathway", report["baseline"])):
        line = f"{name:<20} final {run['final_val_acc']:.4f}   best {run['best_val_acc']:.4f}"
        assert line in text, f"docs/training.md should quote: {line}"


def test_a_given_report_renders_its_figures(script: ModuleType) -> None:
    block = script.render([_report(3, (0.5, 0.75), (0.5, 0.6)), _report(0, (0.9, 0.91), (0.8, 0.85))])
    rows = [line for line in block.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert rows == ["| 0 (the demo's default) | 0.900 / 0.910 | 0.800 / 0.850 |",
                    "| 3 | 0.500 / 0.750 | 0.500 / 0.600 |"]
    assert "0.700 with the pathway, 0.650 without" in block and "ahead on every seed" in block
    mixed = script.render([_report(0, (0.9, 0.9), (0.8, 0.8)), _report(1, (0.7, 0.7), (0.8, 0.8))])
    assert "no consistent difference" in mixed
    with pytest.raises(SystemExit, match="mix budgets"):
        script.render([_report(0, (0.9, 0.9), (0.8, 0.8)), {**_report(1, (0.9, 0.9), (0.8, 0.8)), "epochs": 5}])


def test_check_catches_a_stale_table_and_a_rewrite_mends_it(script: ModuleType, tmp_path: Path, capsys) -> None:
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text().replace("| 0 (the demo's default) | 0.",
                                                                "| 0 (the demo's default) | 1."))
    reports = [str(p) for p in REPORTS]
    assert script.main(["--check", "--readme", str(readme), *reports]) == 1
    assert "the demo table is stale" in capsys.readouterr().err
    assert script.main(["--readme", str(readme), *reports]) == 0
    assert readme.read_text() == (ROOT / "README.md").read_text()
    assert script.main(["--check", "--readme", str(readme), *reports]) == 0


def test_the_markers_are_required(script: ModuleType) -> None:
    with pytest.raises(SystemExit, match="needs exactly one"):
        script.replace_block("no markers here", "table")
    assert re.search(r"demo-table.*do not edit", script.BEGIN)
