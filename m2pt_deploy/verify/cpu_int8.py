"""The int8 CPU model against the fp32 model it was quantized from.

Reference: the unmerged torch model (bit-identical to the merged fp32 one); candidate: the
int8 ONNX run the way a server runs it (``runtime.runners.cpu_runner``). int8 logits move by design,
so the judge is top-1 agreement, at least 99%, on held-out real inputs of the model's family
(photo tiles, or a held-out part of the user's spectrograms, clips or point clouds).
"""

from __future__ import annotations

import os

import numpy as np

from m2pt_deploy.cpu import cpu_model, int8_target
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families import family_of
from m2pt_deploy.model.build import build_unmerged
from m2pt_deploy.model.checkpoint import Checkpoint
from m2pt_deploy.runtime.runners import TorchRunner, cpu_runner
from m2pt_deploy.verify.numerics import compare_runners
from m2pt_deploy.verify.result import CheckResult
from m2pt_deploy.verify.tensorrt import graph_input_name
from m2pt_deploy.verify.tolerance import INT8_CPU

__all__ = ["verify_int8_cpu"]


def _cpu_note(onnx_path: str | os.PathLike[str]) -> str:
    import onnx

    from m2pt_deploy.metadata import INT8_TARGET_KEY, read_metadata

    meta = read_metadata(onnx.load_model(os.fspath(onnx_path), load_external_data=False))
    quantized = INT8_TARGET_KEY.get(meta) or {}
    made_for = f"{quantized['target']}, {quantized['weight_bits']}-bit weights" if quantized else "unrecorded target"
    return f"run on {int8_target()} ({cpu_model()}); quantized for {made_for}"


def verify_int8_cpu(ckpt: Checkpoint, onnx_path: str | os.PathLike[str], images: np.ndarray, *,
                    batch: int | None = None, source: str = "held-out photo tiles") -> CheckResult:
    """Top-1 agreement of the int8 model, run as a server runs it on this CPU, with the fp32 model,
    ``batch`` inputs at a time (default: the family's ``held_out_batch``).

    The note names this CPU's int8 path and the one the model was quantized for: int8
    numerics differ between instruction sets, so the verdict holds for CPUs like this one.
    """
    size = tuple(ckpt.spec.input_size)
    if tuple(images.shape[1:]) != size or len(images) == 0:
        raise M2ptError(f"inputs must be a non-empty [N, {', '.join(map(str, size))}] array, got shape "
                        f"{list(images.shape)}")
    x = np.ascontiguousarray(images, dtype=np.float32)
    name = graph_input_name(onnx_path)  # the family's input name, as the export declared it
    batch = batch or family_of(ckpt.spec).held_out_batch
    feeds = [{name: x[i:i + batch]} for i in range(0, len(x), batch)]
    reference = TorchRunner(lambda: build_unmerged(ckpt), (None, *size), name="torch-unmerged", input_name=name)
    (result,) = compare_runners([reference, cpu_runner(onnx_path)], feeds, INT8_CPU, check="int8 onnx (cpu)",
                                note=f"{len(x)} {source}; {_cpu_note(onnx_path)}")
    return result
