"""Read a ``.pth`` file without running code from it, including real training checkpoints.

``torch.load(weights_only=True)`` rebuilds tensors and plain containers only. The training
scripts M2PT users run also pickle inert metadata beside the weights: MAE / VideoMAE /
AudioMAE ``save_model`` stores ``args`` as an ``argparse.Namespace``, Point-MAE's
segmentation scripts store numpy scalars, and ``output_dir`` may be a ``pathlib`` path.
Those types are allow-listed here, by exact name, through torch's own restricted
unpickler (``torch.serialization.safe_globals``): it resolves only listed globals and
never calls anything else, so a pickle that names ``os.system`` is still refused.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m2pt_deploy.errors import M2ptError

__all__ = ["SAFE_GLOBALS", "load_torch_file"]


def _safe_globals() -> list[Any]:
    # NOTE numpy 2 pickles name numpy._core; files written under numpy 1 name numpy.core.
    # Each entry is a constructor without side effects: it only rebuilds a value.
    from numpy._core import multiarray

    allowed: list[Any] = [
        argparse.Namespace,
        collections.OrderedDict,
        pathlib.PosixPath, pathlib.PurePosixPath, pathlib.WindowsPath, pathlib.PureWindowsPath,
        np.dtype, np.ndarray, multiarray.scalar, multiarray._reconstruct,
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    ]
    allowed += [type(np.dtype(code)) for code in ("?", "b", "B", "h", "H", "i", "I", "l", "L", "q", "Q",
                                                   "e", "f", "d", "g", "F", "D", "U", "S")]
    return allowed


SAFE_GLOBALS = _safe_globals()
_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_]\w*(?:\.\w+)+)")
_ZIP_MAGIC, _PICKLE_MAGIC = b"PK\x03\x04", b"\x80"


def load_torch_file(path: Path) -> Any:
    """The unpickled object; bad, truncated or code-carrying files raise one-line :class:`M2ptError`."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        raise M2ptError("not a readable PyTorch checkpoint (neither a torch.save zip archive nor a pickle)", path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _GLOBAL.search(str(e))
        if found is None:
            raise M2ptError("truncated or corrupt checkpoint (its pickle cannot be read)", path) from e
        raise M2ptError(
            f"refusing to load: the pickle needs code to run ({found[1]}); only tensors, plain containers "
            "and inert training metadata (argparse.Namespace, numpy scalars) are loaded",
            path,
        ) from e
    except Exception as e:
        # torch reports damage from its C++ zip reader (RuntimeError), the OS (a cut-off
        # file: OSError EINVAL), or the unpickler (any type); none of that text helps a user.
        raise M2ptError("truncated or corrupt checkpoint", path) from e
