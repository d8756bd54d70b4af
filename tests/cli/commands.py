"""Run a command in-process and check the one-line error contract: helpers for the CLI tests."""

from __future__ import annotations

from m2pt_deploy.cli.common import run_main
from m2pt_deploy.cli.export import main


def export(argv: list[str], capsys) -> tuple[int, str, str]:
    code = run_main(main, argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0]
