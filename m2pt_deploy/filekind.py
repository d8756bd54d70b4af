"""What a file is, from its first bytes: so a wrong file given to a command is named for what it
is, with the command that takes it, before anything reads it in full (or imports torch)."""

from __future__ import annotations

import dataclasses
import os
import struct
import zipfile
from pathlib import Path
from typing import Literal

from m2pt_deploy.errors import M2ptError

__all__ = ["FileKind", "file_kind", "require_checkpoint", "require_onnx", "require_served_model"]

Kind = Literal["missing", "directory", "safetensors", "torch-zip", "pickle", "onnx", "npz", "npy", "image",
               "engine", "empty", "other"]


@dataclasses.dataclass(frozen=True)
class FileKind:
    kind: Kind
    #: What it is, in words ("an ONNX model"); for the messages.
    what: str
    #: Which commands take it ("m2pt-serve, m2pt-bench and m2pt-verify --onnx take it"), or "".
    takers: str = ""


_CHECKPOINT_TAKERS = "m2pt-export, m2pt-merge, m2pt-verify, m2pt-bench and m2pt-train take it"
_IMAGES = ((b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
           (b"BM", "a BMP image"))
_DATA_TAKERS = "m2pt-train --data, m2pt-bench --data and m2pt-export --calib-data take data"


def _zip_kind(path: Path) -> FileKind:
    """A torch.save archive holds ``<name>/data.pkl``; an .npz holds ``*.npy`` members."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return FileKind("torch-zip", "a damaged zip archive")
    if any(n.endswith("data.pkl") for n in names):
        return FileKind("torch-zip", "a PyTorch checkpoint", _CHECKPOINT_TAKERS)
    if names and all(n.endswith(".npy") for n in names):
        return FileKind("npz", "a NumPy .npz archive", _DATA_TAKERS)
    return FileKind("other", "a zip archive that is neither a PyTorch checkpoint nor an .npz")


def _is_safetensors(head: bytes, size: int) -> bool:
    """8 bytes of little-endian header length, then the JSON header."""
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 0 < length <= size - 8 and head[8:9] == b"{"


def _is_onnx(head: bytes, path: Path) -> bool:
    """An ``onnx.ModelProto`` starts with field 1 (ir_version, a small varint), then another field."""
    if path.suffix.lower() == ".onnx":
        return True
    return len(head) > 3 and head[0] == 0x08 and head[1] < 0x20 and head[2] in (0x12, 0x1A, 0x22, 0x2A, 0x3A, 0x42)


def file_kind(path: str | os.PathLike[str]) -> FileKind:
    """Recognise ``path`` by its first bytes (its suffix only for ONNX and TensorRT engines, which
    have no magic number)."""
    p = Path(path)
    if not p.exists():
        return FileKind("missing", "no such file")
    if p.is_dir():
        return FileKind("directory", "a directory",
                        "m2pt-serve takes a folder of ONNX models; --data and --calib-data a folder of images")
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise M2ptError(f"cannot be read ({e.strerror or e})", p) from e
    if not head:
        return FileKind("empty", "an empty file")
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(p)
    if head.startswith(b"\x93NUMPY"):
        return FileKind("npy", "a NumPy .npy array", "m2pt-verify --inputs takes it")
    if head.startswith(b"\x80"):
        return FileKind("pickle", "a pickled (legacy torch.save) checkpoint", _CHECKPOINT_TAKERS)
    for magic, what in _IMAGES:
        if head.startswith(magic):
            return FileKind("image", what, "folders of images go to --data or --calib-data")
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return FileKind("image", "a WebP image", "folders of images go to --data or --calib-data")
    if _is_safetensors(head, size):
        return FileKind("safetensors", "a safetensors file", _CHECKPOINT_TAKERS)
    if _is_onnx(head, p):
        return FileKind("onnx", "an ONNX model", "m2pt-serve, m2pt-bench and m2pt-verify --onnx take it")
    if p.suffix.lower() in (".engine", ".plan"):
        return FileKind("engine", "a TensorRT engine", "m2pt-verify --engine takes it")
    if _is_text(head):
        return FileKind("other", "a text file")
    return FileKind("other", "a file of a kind this toolkit does not read")


def _is_text(head: bytes) -> bool:
    try:
        return head.decode("utf-8").isprintable() or all(c.isprintable() or c.isspace() for c in head.decode())
    except UnicodeDecodeError:
        return False


def _refuse(path: str | os.PathLike[str], kind: FileKind, wanted: str) -> M2ptError:
    if kind.kind == "missing":
        return M2ptError("no such file", path)
    if kind.kind == "directory":
        return M2ptError(f"is a directory, not {wanted} file", path)
    takers = f" ({kind.takers})" if kind.takers else ""
    return M2ptError(f"is {kind.what}, not {wanted}{takers}", path)


def require_checkpoint(path: str | os.PathLike[str]) -> FileKind:
    """Refuse anything but a safetensors file or a torch checkpoint (zip or pickle), naming what it is."""
    kind = file_kind(path)
    if kind.kind in ("safetensors", "torch-zip", "pickle"):
        return kind
    if kind.kind in ("empty", "other") and Path(path).suffix.lower() in (".pth", ".pt", ".bin", ".ckpt",
                                                                         ".safetensors"):
        # Named like a checkpoint: let the reader say it is damaged (truncated or corrupt).
        return kind
    raise _refuse(path, kind, "a checkpoint")


def require_onnx(path: str | os.PathLike[str]) -> FileKind:
    """Refuse anything but an ONNX model, naming what it is."""
    kind = file_kind(path)
    if kind.kind == "onnx":
        return kind
    raise _refuse(path, kind, "an ONNX model")


def require_served_model(path: str | os.PathLike[str], *, folder_ok: bool = True) -> FileKind:
    """What a server takes: an ONNX model, or (``folder_ok``) a Triton model repository folder."""
    kind = file_kind(path)
    if kind.kind == "missing":
        raise M2ptError("no such file or directory", path)
    if kind.kind == "onnx" or (folder_ok and kind.kind == "directory"):
        return kind
    wanted = "an .onnx file or a Triton model repository folder" if folder_ok else "an .onnx file"
    takers = f" ({kind.takers})" if kind.takers else ""
    raise M2ptError(f"is {kind.what}, not {wanted}{takers}", path)
