"""Every example command a user can copy, from each ``--help`` and from the README's and docs' code
blocks, parses with that command's own parser and does not collide with a default; every option
has help text."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# One module per command (m2pt-serve-bench is cli/serve_bench.py): a new command is covered too.
COMMANDS = sorted(p.stem for p in (ROOT / "m2pt_deploy" / "cli").glob("*.py") if p.stem not in ("__init__", "common"))

# A command line: an optional shell prompt and environment assignments, then a console script
# (m2pt-serve-bench -> cli.serve_bench) or `... -m m2pt_deploy.cli.<module>` (torchrun, python -m).
_COMMAND = re.compile(r"^(?:\$\s+)?(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*"
                      r"(?:(?P<script>m2pt-[a-z-]+)|\S*\s.*?-m\s+m2pt_deploy\.cli\.(?P<module>\w+))(?=\s|$)")
# Lines that look like commands and are not meant to run, with the reason; matched by their start.
NOT_EXAMPLES = {
    "m2pt-export --format trt CHECKPOINT [-o model.engine]": "docs/tensorrt.md's synopsis: [optional] flags, a|b",
    "m2pt-verify CHECKPOINT --engine model.engine [--inputs": "docs/tensorrt.md's synopsis of engine verification",
    "$ torchrun --nnodes 2 --node_rank 0": "docs/training.md: elides (...) the arguments the line above spells out",
}


@dataclasses.dataclass(frozen=True)
class Example:
    where: str  # "docs/serving.md:11" or "m2pt-serve --help"
    line: str
    module: str
    argv: list[str]

    def __str__(self) -> str:
        return f"{self.where}: {self.line}"


def _example(where: str, line: str) -> Example | None:
    match = _COMMAND.match(line)
    if match is None or any(line.startswith(start) for start in NOT_EXAMPLES):
        return None
    module = match["module"] or match["script"].removeprefix("m2pt-").replace("-", "_")
    return Example(where, line, module, _argv(line[match.end():]))


def _argv(text: str) -> list[str]:
    """The command's own arguments, as the shell splits them: up to a comment, `;`, `|`, `&&` or `>`."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = list(lexer)
    ends = [i for i, word in enumerate(words) if word and set(word) <= set(";&|<>()")]
    return words[:ends[0]] if ends else words


def _logical_lines(lines: list[str]) -> Iterator[tuple[int, str]]:
    """(first line number, text) with backslash continuations joined."""
    start, parts = 0, []
    for number, line in enumerate(lines, 1):
        start = start or number
        if line.rstrip().endswith("\\"):
            parts.append(line.rstrip()[:-1])
            continue
        yield start, " ".join(p.strip() for p in [*parts, line] if p.strip())
        start, parts = 0, []


def doc_examples(doc: Path) -> list[Example]:
    """Command lines inside the fenced code blocks of a Markdown file."""
    blocks: list[tuple[int, list[str]]] = []
    current: tuple[int, list[str]] | None = None
    for number, line in enumerate(doc.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            if current is not None:
                blocks.append(current)
            current = None if current is not None else (number + 1, [])
            continue
        if current is not None:
            current[1].append(line)
    where, examples = doc.relative_to(ROOT), []
    for first, lines in blocks:
        for offset, text in _logical_lines(lines):
            example = _example(f"{where}:{first + offset - 1}", text)
            if example:
                examples.append(example)
    return examples


def help_examples(module: str) -> list[Example]:
    """Command lines in a command's --help: its epilog, printed as written."""
    parser = importlib.import_module(f"m2pt_deploy.cli.{module}").build_parser()
    where = f"{parser.prog} --help"
    return [e for _, text in _logical_lines((parser.epilog or "").splitlines()) if (e := _example(where, text))]


def all_examples() -> list[Example]:
    return [e for doc in DOCS for e in doc_examples(doc)] + [e for m in COMMANDS for e in help_examples(m)]


def parse(example: Example) -> argparse.Namespace:
    """The example through its command's parser; a parse error fails naming the example."""
    assert example.module in COMMANDS, f"{example}: no command m2pt_deploy.cli.{example.module}"
    parser = importlib.import_module(f"m2pt_deploy.cli.{example.module}").build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parser.parse_args(example.argv)
    except SystemExit:
        pytest.fail(f"{example}\n  does not parse: {err.getvalue().strip().splitlines()[-1]}")


def collisions(example: Example, args: argparse.Namespace) -> list[str]:
    """Settings of an example that clash with the command's own defaults."""
    if example.module == "serve" and not args.no_grpc and args.port and args.port == args.grpc_port:
        return [f"HTTP --port {args.port} is the gRPC port too (--grpc-port defaults to 8001); "
                "pass another --grpc-port, or --no-grpc"]
    return []


def test_the_examples_are_found() -> None:
    """The extraction itself: every command's examples, from the help and from the docs."""
    examples = all_examples()
    found = {e.where.split(":")[0] for e in examples}
    assert {"README.md", "docs/serving.md", "docs/training.md", "docs/tensorrt.md", "docs/performance.md",
            "m2pt-export --help", "m2pt-serve --help", "m2pt-train --help"} <= found
    assert {e.module for e in examples} >= {"export", "merge", "verify", "train", "serve", "bench"}
    torchrun = [e for e in examples if e.line.startswith("torchrun")]
    assert torchrun and torchrun[0].module == "train" and torchrun[0].argv[0] == "target.pth"
    keyed = [e for e in examples if e.line.startswith("M2PT_SERVE_API_KEY=")]
    assert keyed and keyed[0].argv == ["vit.onnx", "--host", "0.0.0.0"]
    continued = [e for e in examples if "--instance-kind KIND_GPU" in e.line]
    assert continued and continued[0].where.startswith("docs/serving.md:") and "-o" in continued[0].argv
    shell = [e for e in examples if "; echo $?" in e.line]
    assert shell and shell[0].argv == ["model.safetensors", "--onnx", "missing.onnx"]


def test_every_placeholder_line_is_still_there() -> None:
    """NOT_EXAMPLES does not go stale: each listed line still exists, somewhere."""
    text = "\n".join(doc.read_text() for doc in DOCS)
    for start in NOT_EXAMPLES:
        assert re.search(r"^\s*" + re.escape(start), text, re.M), f"NOT_EXAMPLES lists {start!r}, found nowhere"


@pytest.mark.parametrize("example", all_examples(), ids=str)
def test_example_parses_and_keeps_clear_of_defaults(example: Example) -> None:
    args = parse(example)
    assert not collisions(example, args), f"{example}\n  {collisions(example, args)[0]}"


def test_a_colliding_example_is_caught() -> None:
    """The help's old repository example put HTTP on gRPC's default port: both servers cannot bind it."""
    example = _example("m2pt-serve --help", "m2pt-serve models/ --port 8001   # a repository")
    assert example is not None and example.argv == ["models/", "--port", "8001"]
    assert collisions(example, parse(example))
    for fine in ("m2pt-serve models/ --port 8001 --no-grpc", "m2pt-serve models/ --port 8080 --grpc-port 8081",
                 "m2pt-serve vit.onnx --port 0 --grpc-port 0"):
        example = _example("test", fine)
        assert example is not None and not collisions(example, parse(example)), fine


def test_a_bad_example_fails_naming_its_place() -> None:
    example = _example("docs/x.md:3", "m2pt-export --format onnx ckpt.pth --no-such-flag")
    assert example is not None
    with pytest.raises(pytest.fail.Exception, match=r"(?s)docs/x.md:3: .*unrecognized arguments: --no-such-flag"):
        parse(example)


@pytest.mark.parametrize("module", COMMANDS)
def test_every_option_has_help(module: str) -> None:
    parser = importlib.import_module(f"m2pt_deploy.cli.{module}").build_parser()
    missing = [a.option_strings[0] if a.option_strings else a.dest for a in parser._actions
               if not a.help or a.help == argparse.SUPPRESS]
    assert not missing, f"{parser.prog}: options without help text: {', '.join(missing)}"
