"""int8 at the paper's size, end to end: m2pt-export --precision int8 --calib-data, then m2pt-serve.

    python scripts/paper_int8.py videomae --out paper-int8     # also: audiomae, pointmae

No paper-size M2PT weights can be downloaded here, and int8 agreement on random weights says
nothing (a random model's top-2 logits are near ties). So the model is the family's paper-size
architecture (``m2pt_deploy.bench.paper``) with **random weights and a random-λ pathway**, whose
**head alone is fitted** (logistic regression on the pooled features of the unmerged pathway model)
to the family's learnable task (``m2pt_deploy.inputs.learnable``: digit clips, synthesized sounds,
solids) at the paper's input size, 4 classes. Its logits then carry a decision, which int8 has to
keep; the backbone's features are random ones, so this measures quantization error at the real
width, depth and token count, not the accuracy of a trained M2PT model.

Steps, each printed with its wall time: fit the head; save the checkpoint (safetensors, the
pathway unmerged); write ``calib.npz`` (``--calib`` calibration inputs, then ``--held-out``
verification inputs, all unseen by the head fit); run ``m2pt-export --precision int8 --optimize
--calib-data calib.npz --calib-images C --verify-images H`` as its own process (its report, exit
status, wall time, peak RSS); start ``m2pt-serve`` on the int8 file, send one held-out input over
KServe v2 (binary tensors, tritonclient) and compare the served logits with ONNX Runtime's on the
same file. ``report.json`` in ``--out`` keeps every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from m2pt_deploy.bench.export_cost import run_measured  # noqa: E402
from m2pt_deploy.bench.latency import pathway_pair  # noqa: E402
from m2pt_deploy.bench.machine import machine_info, machine_line  # noqa: E402
from m2pt_deploy.bench.paper import PAPER_MODELS  # noqa: E402
from m2pt_deploy.families import ModelSpec, family_of  # noqa: E402
from m2pt_deploy.inputs.learnable import learnable_task  # noqa: E402
from m2pt_deploy.inputs.preprocess import array_inputs  # noqa: E402
from m2pt_deploy.model.checkpoint import PathwayInfo, save_checkpoint  # noqa: E402
from m2pt_deploy.model.pathway import pathway_state_dict  # noqa: E402

CLASSES = 4
FORWARD_BATCH = 4


def paper_spec(family: str) -> ModelSpec:
    spec = PAPER_MODELS[family]
    return dataclasses.replace(spec, model_kwargs={**spec.model_kwargs, "num_classes": CLASSES})


def pooled_features(model: torch.nn.Module, head: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """What the head reads, for every input (a forward hook on the head)."""
    seen: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            for i in range(0, len(x), FORWARD_BATCH):
                model(torch.from_numpy(np.ascontiguousarray(x[i:i + FORWARD_BATCH])))
    finally:
        hook.remove()
    return torch.cat(seen).numpy()


def fit_head(model: torch.nn.Module, spec: ModelSpec, x: np.ndarray, y: np.ndarray) -> float:
    """Logistic regression on what the head's last Linear reads (Point-MAE's head is an MLP),
    written into that Linear; its training top-1."""
    from sklearn.linear_model import LogisticRegression

    (head_name,) = family_of(spec).head_modules()
    head = [m for m in model.get_submodule(head_name).modules() if isinstance(m, torch.nn.Linear)][-1]
    features = pooled_features(model, head, array_inputs(spec, x))
    clf = LogisticRegression(max_iter=5000).fit(features, y)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(clf.coef_).float())
        head.bias.copy_(torch.from_numpy(clf.intercept_).float())
    return float(clf.score(features, y))


def run_export(ckpt: Path, calib: Path, out: Path, calib_n: int, held_n: int) -> dict[str, Any]:
    """``m2pt-export`` as its own process (wall time and peak RSS of that process alone), with its
    verification report."""
    report = out.with_suffix(".report.json")
    args = ["--format", "onnx", str(ckpt), "--precision", "int8", "--optimize", "--calib-data", str(calib),
            "--calib-images", str(calib_n), "--verify-images", str(held_n), "-o", str(out), "--report", str(report),
            "--force"]
    cost = run_measured([sys.executable, "-m", "m2pt_deploy.cli.export"], args, label="m2pt-export " + " ".join(args),
                        cwd=ROOT)
    verdict = json.loads(report.read_text()) if report.is_file() else None
    return {**cost.to_dict(), "verification": verdict}


def serve_one(model: Path, x: np.ndarray, log: Path) -> dict[str, Any]:
    """Start m2pt-serve on the file, send ``x`` (one input, batch 1), compare with ONNX Runtime's logits."""
    import tritonclient.http as http

    from m2pt_deploy.runtime.sessions import cpu_session

    server = subprocess.Popen([sys.executable, "-m", "m2pt_deploy.cli.serve", str(model), "--host", "127.0.0.1",
                               "--port", "0", "--no-grpc", "--max-body-mb", "256"],
                              stdout=subprocess.PIPE, stderr=log.open("w"), text=True, cwd=ROOT)
    try:
        assert server.stdout is not None
        address = None
        for line in server.stdout:
            match = re.match(r"serving on http://(\S+:\d+)", line)
            if match:
                address = match.group(1)
                break
        if address is None:
            return {"error": f"m2pt-serve exited with {server.wait()} before serving (log: {log})"}
        session = cpu_session(model)
        name = session.get_inputs()[0].name
        local = session.run(None, {name: x})[0]
        client = http.InferenceServerClient(address, network_timeout=600.0, connection_timeout=600.0)
        tensor = http.InferInput(name, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        start = time.perf_counter()
        result = client.infer(model.stem, [tensor], outputs=[http.InferRequestedOutput(session.get_outputs()[0].name,
                                                                                        binary_data=True)])
        latency = time.perf_counter() - start
        served = result.as_numpy(session.get_outputs()[0].name)
        return {"address": address, "model": model.stem, "input": name, "shape": list(x.shape),
                "request_s": round(latency, 3), "served_argmax": served.argmax(-1).tolist(),
                "max_abs_diff_vs_onnxruntime": float(np.abs(served - local).max()),
                "bit_identical": bool(np.array_equal(served, local))}
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("family", choices=("videomae", "audiomae", "pointmae"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fit", type=int, default=64, help="inputs the head is fitted on")
    parser.add_argument("--calib", type=int, default=16, help="calibration inputs")
    parser.add_argument("--held-out", type=int, default=32, help="verification inputs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"family": args.family, "machine": machine_info(), "steps_s": {}}
    print(machine_line(report["machine"]), flush=True)

    def step(label: str, start: float) -> None:
        report["steps_s"][label] = round(time.perf_counter() - start, 1)
        print(f"{label}: {report['steps_s'][label]} s", flush=True)

    spec = paper_spec(args.family)
    t = time.perf_counter()
    torch.manual_seed(args.seed)
    model = pathway_pair(spec, seed=args.seed)
    fit = learnable_task(spec, args.fit, seed=args.seed + 10)
    report["task"] = fit.task
    report["head_train_top1"] = fit_head(model, spec, fit.x, fit.y)
    step(f"fit the head on {args.fit} inputs ({fit.task})", t)

    t = time.perf_counter()
    family = family_of(spec)
    ckpt = save_checkpoint(args.out / f"{args.family}.safetensors", pathway_state_dict(model), spec,
                           pathway=PathwayInfo(family.pathway_layers, family.block_path, "scalar",
                                               ({"modality": "random", "sha256": None},)), force=True)
    data = learnable_task(spec, args.calib + args.held_out, seed=args.seed + 20)
    calib = args.out / "calib.npz"
    np.savez(calib, x=data.x, y=data.y)
    held = array_inputs(spec, data.x[args.calib:])
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(np.ascontiguousarray(held[i:i + FORWARD_BATCH])))
                            for i in range(0, len(held), FORWARD_BATCH)])
    top2 = logits.topk(2, dim=1).values
    report["held_out_fp32_top1"] = float((logits.argmax(1).numpy() == data.y[args.calib:]).mean())
    report["held_out_median_top2_gap"] = float((top2[:, 0] - top2[:, 1]).median())
    step("checkpoint, calib.npz and the fp32 held-out scores", t)
    del model

    onnx_path = args.out / f"{args.family}.int8.onnx"
    report["export"] = run_export(ckpt, calib, onnx_path, args.calib, args.held_out)
    print(json.dumps(report["export"]["verification"]), flush=True)
    print(f"m2pt-export: exit {report['export']['returncode']}, {report['export']['wall_s']:.1f} s, "
          f"peak RSS {report['export']['peak_rss_mb']:.0f} MB", flush=True)
    if report["export"]["returncode"] == 0:
        report["served"] = serve_one(onnx_path, held[:1], args.out / "serve.log")
        print(json.dumps(report["served"]), flush=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
