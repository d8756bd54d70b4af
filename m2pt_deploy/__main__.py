"""``python -m m2pt_deploy COMMAND [ARGS]``: a command by the name of its module in ``cli/``
(``engine-info``, ``export``, ``verify``, ...), for scripts that know an interpreter rather than a
PATH. An engine's ``ENGINE.build.sh`` writes the engine's sidecar with
``"$PYTHON" -m m2pt_deploy engine-info sidecar ...``: the export layer that writes the script names
the package, not the command layer above it."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["commands", "main"]


def commands() -> tuple[str, ...]:
    folder = Path(__file__).parent / "cli"
    return tuple(sorted(p.stem.replace("_", "-") for p in folder.glob("*.py") if p.stem not in ("__init__", "common")))


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in commands():
        print(f"usage: python -m m2pt_deploy {{{','.join(commands())}}} [ARGS]", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module("m2pt_deploy.cli." + argv[0].replace("-", "_"))
    sys.argv = [f"{sys.argv[0]} {argv[0]}", *argv[1:]]
    module.entrypoint()


if __name__ == "__main__":
    main()
