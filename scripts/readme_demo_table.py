"""Render the README's demo table from demo runs, so that its figures are measured, never typed.

Each run of ``m2pt-demo --out DIR`` writes ``DIR/demo.json`` (the seed, and each run's final and
best validation accuracy). This script reads those reports, one per seed, and rewrites the part of
README.md between the ``demo-table`` marker comments; ``--check`` only says whether it is current.

    python scripts/readme_demo_table.py docs/bench/demo-seed-*.json             # rewrite README.md
    python scripts/readme_demo_table.py --check docs/bench/demo-seed-*.json     # exit 1 if stale
    python scripts/readme_demo_table.py --run 0 1 2 --save docs/bench           # run the demo first

The reports the README's table was rendered from are committed in docs/bench/demo-seed-N.json;
tests/test_readme_demo_table.py checks that the README equals what they render.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import mean
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BEGIN = "<!-- demo-table: rendered by scripts/readme_demo_table.py from demo.json reports; do not edit -->"
END = "<!-- /demo-table -->"
DEFAULT_SEED = 0  # m2pt-demo's default, marked in the table


def load_report(path: Path) -> dict[str, Any]:
    """A demo.json, or the demo output folder holding one."""
    path = path / "demo.json" if path.is_dir() else path
    report = json.loads(path.read_text())
    for key in ("seed", "epochs", "pathway", "baseline"):
        if key not in report:
            raise SystemExit(f"{path}: not a demo report (no {key!r}); m2pt-demo --out DIR writes DIR/demo.json")
    return report


def render(reports: Sequence[Mapping[str, Any]]) -> str:
    """The table, one row per seed, and the comparison it supports."""
    if not reports:
        raise SystemExit("no demo reports given")
    runs = sorted(reports, key=lambda r: r["seed"])
    epochs = {r["epochs"] for r in runs}
    if len(epochs) != 1:
        raise SystemExit(f"the reports mix budgets ({sorted(epochs)} epochs); compare runs of one budget")

    def cell(run: Mapping[str, Any]) -> str:
        return f"{run['final_val_acc']:.3f} / {run['best_val_acc']:.3f}"

    lines = ["| seed | with audio pathway (final / best) | without (final / best) |", "| --- | --- | --- |"]
    for r in runs:
        seed = f"{r['seed']} (the demo's default)" if r["seed"] == DEFAULT_SEED else str(r["seed"])
        lines.append(f"| {seed} | {cell(r['pathway'])} | {cell(r['baseline'])} |")
    with_ = mean(r["pathway"]["final_val_acc"] for r in runs)
    without = mean(r["baseline"]["final_val_acc"] for r in runs)
    gaps = [r["pathway"]["final_val_acc"] - r["baseline"]["final_val_acc"] for r in runs]
    if min(gaps) < 0 < max(gaps):
        verdict = "the pathway makes no consistent difference: it is ahead on some seeds and behind on others"
    else:
        verdict = f"the pathway is {'ahead' if min(gaps) >= 0 else 'behind'} on every seed measured"
    torch_versions = ", ".join(sorted({str(r.get("torch", "?")) for r in runs}))
    summary = (f"Mean final accuracy over {len(runs)} seeds: {with_:.3f} with the pathway, {without:.3f} without "
               f"(per seed, with minus without: {', '.join(f'{g:+.3f}' for g in gaps)}). On this toy setting "
               f"{verdict} ({epochs.pop()} epochs, torch {torch_versions}).")
    return "\n".join([*lines, "", textwrap.fill(summary, width=100, break_on_hyphens=False)])


def replace_block(readme: str, block: str) -> str:
    if readme.count(BEGIN) != 1 or readme.count(END) != 1 or readme.index(BEGIN) > readme.index(END):
        raise SystemExit(f"README.md needs exactly one {BEGIN} ... {END} pair")
    head, rest = readme.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def current_block(readme: str) -> str:
    return readme.split(BEGIN)[1].split(END)[0].strip("\n")


def run_demo(seeds: Sequence[int], save: Path | None) -> list[Path]:
    """``m2pt-demo`` once per seed (about a minute each on one CPU thread); their demo.json files."""
    reports = []
    with tempfile.TemporaryDirectory(prefix="demo-table-") as tmp:
        for seed in seeds:
            out = Path(tmp) / f"seed-{seed}"
            subprocess.run([sys.executable, "-m", "m2pt_deploy.cli.demo", "--out", str(out), "--seed", str(seed),
                            "--quiet"], check=True, stdout=subprocess.DEVNULL)
            keep = (save or ROOT / "docs" / "bench") / f"demo-seed-{seed}.json"
            keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / "demo.json", keep)
            reports.append(keep)
    return reports


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="*", type=Path, help="demo.json files, or the demo folders holding them")
    parser.add_argument("--run", nargs="+", type=int, metavar="SEED", help="run m2pt-demo with these seeds first")
    parser.add_argument("--save", type=Path, metavar="DIR",
                        help="with --run: where the reports are kept as demo-seed-N.json (default: docs/bench)")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md", help="the file to rewrite")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if the README is stale")
    args = parser.parse_args(argv)
    paths = [*args.reports, *(run_demo(args.run, args.save) if args.run else [])]
    block = render([load_report(p) for p in paths])
    readme = args.readme.read_text()
    if args.check:
        if current_block(readme) != block:
            print(f"{args.readme}: the demo table is stale; run: python scripts/readme_demo_table.py "
                  + " ".join(map(str, paths)), file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(replace_block(readme, block))
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
