from __future__ import annotations

from pathlib import Path

import pytest

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.fileio import atomic_output, check_output_path


def test_atomic_output_renames_only_on_success(tmp_path: Path) -> None:
    out = tmp_path / "a.bin"
    with pytest.raises(RuntimeError), atomic_output(out) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
    with atomic_output(out) as tmp:
        tmp.write_bytes(b"whole")
    assert out.read_bytes() == b"whole"
    assert out.stat().st_mode & 0o777 == 0o666 & ~_current_umask()
    assert list(tmp_path.iterdir()) == [out]


def _current_umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_existing_output_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "a.bin"
    out.write_bytes(b"old")
    with pytest.raises(M2ptError, match="output exists; pass --force"):
        check_output_path(out)
    with atomic_output(out, force=True) as tmp:
        tmp.write_bytes(b"new")
    assert out.read_bytes() == b"new"


def test_unusable_output_locations(tmp_path: Path) -> None:
    with pytest.raises(M2ptError, match="output folder does not exist"):
        check_output_path(tmp_path / "nope" / "a.onnx")
    with pytest.raises(M2ptError, match="output is a directory"):
        check_output_path(tmp_path)
    # /proc refuses new files even to root, whose permission bits are otherwise moot.
    with pytest.raises(M2ptError, match="output folder is not writable"):
        check_output_path("/proc/m2pt-test.onnx")
