"""Where the CPU int8 copy puts its Q/DQ pairs, timed side by side at the paper's size.

    python scripts/int8_placement.py audiomae --rounds 20     # also: videomae, pointmae, vit

One vanilla model of the family (random weights), exported once, optimized for fp32 and quantized
twice from the same calibration inputs: ``outputs quantized`` is the TensorRT placement (a Q/DQ pair
on every MatMul / Gemm output too, which ONNX Runtime turns into ``QLinearMatMul`` + dequantize +
bias add), ``outputs float`` the CPU placement ``m2pt-export --precision int8`` writes
(``MatMulIntegerToFloat`` with the bias fused). The three files run in one process, interleaved,
the order reversed every round, idle threads sleeping (a spinning pool of one session would steal
the 2 cores from the next); each int8 file's speed-up is the median over rounds of (that round's
fp32 time) / (its time), with p25–p75.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from m2pt_deploy.bench.latency import trained_like  # noqa: E402
from m2pt_deploy.bench.machine import machine_info, machine_line  # noqa: E402
from m2pt_deploy.bench.paper import PAPER_MODELS  # noqa: E402
from m2pt_deploy.bench.throughput import paired_ratio  # noqa: E402
from m2pt_deploy.export.graph import prepare_graph  # noqa: E402
from m2pt_deploy.export.int8.quantize import quantize_qdq  # noqa: E402
from m2pt_deploy.export.onnx import export_model  # noqa: E402
from m2pt_deploy.export.optimize import optimize_onnx  # noqa: E402
from m2pt_deploy.inputs.seeded import seeded_inputs  # noqa: E402
from m2pt_deploy.model.build import build_vanilla  # noqa: E402
from m2pt_deploy.runtime.io_names import input_name  # noqa: E402
from m2pt_deploy.runtime.sessions import cpu_session  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("family", choices=sorted(PAPER_MODELS))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--calib", type=int, default=8, help="seeded calibration inputs")
    args = parser.parse_args()
    print(machine_line(machine_info()), flush=True)
    spec = PAPER_MODELS[args.family]
    torch.manual_seed(1)
    proto = export_model(trained_like(build_vanilla(spec, exportable=True)).eval(), spec)
    calibration = seeded_inputs(spec.input_size, args.calib, seed=3)
    files = {"fp32 optimized": optimize_onnx(proto)}
    for label, outputs in (("int8, outputs quantized", True), ("int8, outputs float", False)):
        quantized = quantize_qdq(prepare_graph(proto), "int8", calibration, quantize_outputs=outputs)
        files[label] = optimize_onnx(quantized, attention=None)
    x = {input_name(spec): seeded_inputs(spec.input_size, args.batch, seed=5)}
    with tempfile.TemporaryDirectory(prefix="m2pt-placement-") as tmp:
        sessions = {}
        for i, (label, model) in enumerate(files.items()):
            path = Path(tmp, f"{i}.onnx")
            onnx.save_model(model, path)
            sessions[label] = cpu_session(path, spinning=False)
            sessions[label].run(None, x)  # warm-up
        times: dict[str, list[float]] = {label: [] for label in sessions}
        for r in range(args.rounds):
            for label in (list(sessions) if r % 2 == 0 else list(reversed(sessions))):
                start = time.perf_counter()
                sessions[label].run(None, x)
                times[label].append(time.perf_counter() - start)
    print(f"{spec.arch}, batch {args.batch}, {args.rounds} interleaved rounds")
    for label, t in times.items():
        ratio, p25, p75 = paired_ratio(times["fp32 optimized"], t)
        print(f"  {label:24s} median {1e3 * np.median(t):8.1f} ms   speed-up over fp32 {ratio:.3f} "
              f"({p25:.3f}-{p75:.3f})")
    ops = [n.op_type for n in files["int8, outputs float"].graph.node]
    print(f"  outputs float: {ops.count('MatMulIntegerToFloat')} MatMulIntegerToFloat, "
          f"{ops.count('QLinearMatMul')} QLinearMatMul")


if __name__ == "__main__":
    main()
