"""Atomic file output, output probing and content hashes.

Every artifact is written under a temporary name beside its destination and renamed into
place only when it is complete (:func:`atomic_output`) or, for artifacts that are verified
after they are written, only when the verification passed (:func:`staged_output`). A crash,
Ctrl-C, SIGTERM or a full disk leaves the destination as it was and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from m2pt_deploy.errors import M2ptError

__all__ = ["Staged", "atomic_output", "check_output_path", "check_output_folder", "os_error_reason",
           "relink_external_data",
           "sha256_file", "staged_output", "unverified_path"]

# What an OSError means to the user; errnos not listed keep the OS's words.
_REASONS = {
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (a file-size limit?)",
}


def os_error_reason(e: OSError) -> str:
    """An OSError in a user's words: a full disk, a file-size limit, a read-only folder."""
    return _REASONS.get(e.errno or 0, e.strerror or str(e))


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _missing_parent(out: Path) -> M2ptError:
    """Why ``out``'s folder cannot hold it: a file where a folder should be, or no such folder."""
    for ancestor in out.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                return M2ptError(f"cannot create the output: {ancestor} is a file, not a folder", out)
            break
    return M2ptError("output folder does not exist", out.parent)


def _probe_folder(folder: Path) -> None:
    """Create and remove a file in ``folder``: permission bits say nothing when running as root,
    and a read-only mount or /proc only shows itself when a file is created."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        # /proc, /sys and similar virtual file systems answer ENOENT inside a folder that exists.
        reason = "the file system does not take new files" if e.errno == errno.ENOENT else os_error_reason(e)
        raise M2ptError(f"output folder is not writable ({reason})", folder) from e


def check_output_path(path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Refuse an existing output without ``force`` and a folder that cannot take it, before any work."""
    out = Path(path)
    if out.is_dir():
        raise M2ptError("output is a directory; give a file name", out)
    if out.exists() and not force:
        raise M2ptError("output exists; pass --force to overwrite it", out)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise _missing_parent(out)
    _probe_folder(parent)
    return out


def check_output_folder(path: str | os.PathLike[str]) -> Path:
    """A folder that will be created (with its parents) if missing: refuse a file in the way
    and an ancestor that cannot take new entries, before any work."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise M2ptError("is a file; give a folder", out)
    existing = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise M2ptError(f"cannot create the folder: {existing} is a file, not a folder", out)
    _probe_folder(existing)
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_beside(out: Path, suffix: str = ".tmp") -> Path:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=suffix, dir=out.parent or ".")
    os.close(fd)
    return Path(tmp_name)


def _write_error(e: OSError, out: Path) -> M2ptError:
    return M2ptError(f"could not write output: {e.strerror or e}", out)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    A crash, a full disk or an exception leaves the destination as it was and no
    temporary file behind, so no reader ever sees a half-written artifact.
    """
    out = check_output_path(path, force=force)
    tmp = _temp_beside(out)
    try:
        yield tmp
        # mkstemp creates 0600; give the artifact the mode a plain open() would.
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    except OSError as e:
        raise _write_error(e, out) from e
    finally:
        tmp.unlink(missing_ok=True)


def unverified_path(out: Path) -> Path:
    """Where an artifact whose verification failed is kept: ``model.onnx`` → ``model.unverified.onnx``."""
    return out.with_name(f"{out.stem}.unverified{out.suffix}")


class Staged:
    """An artifact being written and verified under a temporary name beside its destination.

    ``path`` is where to write: a file (or folder, for a model repository) with the final name,
    inside a hidden ``.NAME.*.partial`` folder beside the destination, so what verification
    prints names the file the user gets. :meth:`commit` moves it to its final place,
    :meth:`keep_unverified` to a name that says it failed; leaving the ``with`` block without
    either removes it.
    """

    def __init__(self, out: Path, *, force: bool) -> None:
        self.out, self.force = out, force
        self.dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent or "."))
        self.path = self.dir / out.name
        self.done: Path | None = None

    def commit(self) -> Path:
        return self._move(self.out)

    def keep_unverified(self) -> Path:
        return self._move(unverified_path(self.out))

    def _move(self, dest: Path) -> Path:
        if dest.exists() and not self.force and dest == self.out:
            raise M2ptError("output appeared while it was being written; pass --force to overwrite it", dest)
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        if self.path.is_file():
            # mkstemp-style files are 0600; give the artifact the mode a plain open() would.
            os.chmod(self.path, 0o666 & ~_umask())
        data = self.path.with_name(self.path.name + ".data")
        if data.exists():
            # An ONNX graph past 2 GiB names its weights file: move the weights too (relinked
            # when the graph's name changes).
            os.replace(data, dest.with_name(dest.name + ".data"))
            if dest.name != self.path.name:
                relink_external_data(self.path, dest.name + ".data")
        os.replace(self.path, dest)
        self.done = dest
        return dest

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def relink_external_data(graph: Path, location: str) -> None:
    """Point an ONNX graph's external tensors at ``location`` (a file name beside it)."""
    import onnx

    proto = onnx.load_model(graph, load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(proto, graph)


@contextlib.contextmanager
def staged_output(path: str | os.PathLike[str], *, force: bool = False, folder: bool = False) -> Iterator[Staged]:
    """:class:`Staged` for ``path``, checked like :func:`check_output_path` (or
    :func:`check_output_folder` with ``folder``); whatever was not committed or kept is removed
    on the way out, exceptions and KeyboardInterrupt included."""
    out = Path(path)
    if folder:
        check_output_folder(out.parent)
        if out.exists() and not force:
            raise M2ptError("output exists; pass --force to overwrite it", out)
    else:
        check_output_path(out, force=force)
    staged = Staged(out, force=force)
    try:
        yield staged
    except OSError as e:
        raise _write_error(e, out) from e
    finally:
        staged.discard()
