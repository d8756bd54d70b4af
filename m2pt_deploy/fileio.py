"""Atomic file output and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from m2pt_deploy.errors import M2ptError

__all__ = ["atomic_output", "check_output_path", "sha256_file"]


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_output_path(path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Refuse an existing output without ``force`` and an unwritable folder, before any work."""
    out = Path(path)
    if out.is_dir():
        raise M2ptError("output is a directory; give a file name", out)
    if out.exists() and not force:
        raise M2ptError("output exists; pass --force to overwrite it", out)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise M2ptError("output folder does not exist", parent)
    # Probe by creating a file: permission bits alone say nothing when running as root.
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise M2ptError(f"output folder is not writable ({e.strerror})", parent) from e
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    A crash, a full disk or an exception leaves the destination as it was and no
    temporary file behind, so no reader ever sees a half-written artifact.
    """
    out = check_output_path(path, force=force)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent or ".")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600; give the artifact the mode a plain open() would.
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    except OSError as e:
        raise M2ptError(f"could not write output: {e.strerror or e}", out) from e
    finally:
        tmp.unlink(missing_ok=True)
