"""``verify_engine_file``: a TensorRT engine against the unmerged model, and its latency against a
vanilla engine built the same way. ``m2pt-verify --engine`` is a thin shell over it."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from m2pt_deploy.bench.engine_latency import latency_vs_vanilla
from m2pt_deploy.bench.machine import machine_info, machine_line
from m2pt_deploy.export.engine_info import read_engine_info
from m2pt_deploy.fileio import atomic_output, check_output_path
from m2pt_deploy.inputs.calibration import held_out_inputs
from m2pt_deploy.pipelines.export import (
    CheckpointSource,
    ExportResult,
    Show,
    load_for_export,
    silent,
)
from m2pt_deploy.progress import step
from m2pt_deploy.verify import check_inputs
from m2pt_deploy.verify.tensorrt import verify_engine

__all__ = ["REAL_IMAGES", "verify_engine_file"]

REAL_IMAGES = 256


def verify_engine_file(
    checkpoint: CheckpointSource,
    engine: str | os.PathLike[str],
    *,
    model: Mapping[str, Any] | None = None,
    inputs: np.ndarray | None = None,
    batch_size: int | None = None,
    latency: bool = True,
    report: str | os.PathLike[str] | None = None,
    force: bool = False,
    show: Show = silent,
) -> ExportResult:
    """Sidecar and file checks first (no TensorRT needed to refuse a bad engine), then the run on
    ``inputs`` (default: 256 held-out photo tiles) at ``batch_size`` (default: the profile's OPT)."""
    if report:
        check_output_path(report, force=force)
    info = read_engine_info(engine)
    ckpt = load_for_export(checkpoint, model)
    spec = ckpt.spec
    inputs = held_out_inputs(spec, REAL_IMAGES) if inputs is None else check_inputs(inputs, spec.input_size)
    batch = batch_size or info.profile.opt[0]
    info.profile.check_batch(batch, source=os.fspath(engine))
    with step(f"running {engine} ({info.precision}) and the unmerged model on {len(inputs)} images"):
        result = verify_engine(ckpt, engine, inputs, batch=batch)
    show(result)
    data: dict[str, object] = {"engine": os.fspath(engine), "check": result.to_dict(),
                               "engine_info": info.to_dict(), "notes": list(ckpt.notes)}
    if latency:
        with tempfile.TemporaryDirectory(prefix="m2pt-vanilla-") as tmp, \
                step("building a vanilla engine and timing both, interleaved"):
            timed = latency_vs_vanilla(ckpt, engine, inputs, tmp)
        machine = machine_info()
        show(machine_line(machine))
        show(timed.row())
        data |= {"latency": timed.to_dict(), "machine": machine}
    if report:
        with atomic_output(report, force=force) as tmp_path:
            tmp_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return ExportResult((), result)
