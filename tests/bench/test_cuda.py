"""m2pt-bench --device cuda: the refusal without a GPU, the figures on synthetic timings, a
CPU run of the whole cell loop, and one real run where a GPU is visible."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from m2pt_deploy.bench.cuda import CudaBenchOptions, _run
from m2pt_deploy.bench.cuda_report import cell_ratio, cell_rows, failed_rows, markdown, write_report
from m2pt_deploy.cli.bench import main
from m2pt_deploy.cli.common import run_main
from m2pt_deploy.errors import M2ptError
from tests.tiny import TINY

TINY_ARGS = ["--arch", TINY.arch, "--model-kwargs", json.dumps(TINY.model_kwargs)]


def test_cli_refuses_cuda_without_a_device(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    assert run_main(main, ["--device", "cuda", "--out", str(out), *TINY_ARGS]) == 2
    err = capsys.readouterr().err
    assert err == "error: --device cuda: no CUDA device is visible (torch.cuda.is_available() is False)\n"
    assert not out.exists()


def test_rows_from_synthetic_timings() -> None:
    times = {"vanilla": [0.010, 0.012, 0.011, 0.030], "merged": [0.020] * 4}
    vanilla, merged = cell_rows("torch eager", "bf16", 8, times, start_s={"vanilla": 1.5}, params_mb={"merged": 330.0})
    assert vanilla.median_ms == pytest.approx(11.5) and vanilla.images_per_s == pytest.approx(8 / 0.0115)
    assert vanilla.p95_ms == pytest.approx(27.3)  # linear interpolation between 12 and 30 ms
    assert (vanilla.start_s, vanilla.params_mb, merged.params_mb, merged.start_s) == (1.5, None, 330.0, None)
    assert merged.images_per_s == pytest.approx(400.0) and merged.error is None


def test_ratios_are_medians_of_same_round_ratios() -> None:
    # unmerged / merged per round: 2.0, 1.5, 2.0; the ratio of the medians would be 1.5.
    times = {"vanilla": [0.01, 0.02, 0.05], "merged": [0.01, 0.02, 0.05], "unmerged": [0.02, 0.03, 0.10]}
    r = cell_ratio("torch.compile", "fp16", 1, times, max_abs_diff=3e-3)
    assert r.merged_vs_vanilla == (1.0, 1.0, 1.0)
    assert r.unmerged_vs_merged == pytest.approx((2.0, 1.75, 2.0))
    assert (r.rounds, r.max_abs_diff) == (3, 3e-3)
    assert cell_ratio("torch eager", "fp32", 1, {"merged": [0.1]}).merged_vs_vanilla is None


def _report(rows: list[dict], ratios: list[dict], *, complete: bool = True) -> dict:
    return {
        "machine": {"cpu": "Some CPU", "cpu_flags": ["avx2", "fma"], "usable_cpus": 16, "logical_cpus": 16,
                    "platform": "Linux", "python": "3.12.3", "versions": {"timm": "1.0"}},
        "gpu": {"name": "NVIDIA H200", "memory_gib": 139.8, "multiprocessors": 132, "capability": "9.0",
                "torch": "2.11.0", "cuda": "13.0", "cudnn": 91000, "tf32_matmul": False,
                "float32_matmul_precision": "highest"},
        "spec": TINY.to_dict(), "settings": {"rounds": 3, "warmup": 1, "device": "cuda:0"},
        "rows": rows, "ratios": ratios, "complete": complete, "cells_done": 1, "cells_total": 2,
    }


def test_markdown_names_the_machine_and_shows_each_cell() -> None:
    times = {"vanilla": [0.004] * 3, "merged": [0.004] * 3, "unmerged": [0.005] * 3}
    rows = [r.to_dict() for r in cell_rows("torch eager", "bf16", 64, times)]
    rows += [r.to_dict() for r in failed_rows("torch.compile", "bf16", 64, "OutOfMemoryError: CUDA out of memory")]
    ratios = [cell_ratio("torch eager", "bf16", 64, times, max_abs_diff=0.0).to_dict()]
    text = markdown(json.loads(json.dumps(_report(rows, ratios, complete=False))))
    assert "GPU: NVIDIA H200 (140 GiB, 132 SMs, compute capability 9.0); torch 2.11.0, CUDA 13.0" in text
    assert "Host: Some CPU (avx2 fma), 16 usable of 16 logical CPUs" in text
    assert "| torch eager | bf16 | 64 | 16000.0 | 16000.0 | 12800.0 | 1.000 (1.000–1.000) | 1.250 (1.250–1.250) " \
           "| 0.00e+00 |" in text
    assert "| torch.compile | bf16 | 64 | merged | failed: OutOfMemoryError: CUDA out of memory |" in text
    assert "**Incomplete run: 1 of 2 cells measured.**" in text


def test_write_report_writes_json_and_markdown(tmp_path: Path) -> None:
    data = _report([], [])
    json_path, md_path = write_report(data, tmp_path / "out")
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(data))
    assert md_path.read_text() == markdown(data)
    with pytest.raises(M2ptError, match="must be a directory"):
        write_report(data, json_path)


def test_cell_loop_on_cpu_times_every_cell_and_merged_equals_unmerged() -> None:
    # The whole loop with the host clock: eager only, so it takes a second on 2 cores.
    seen: list[int] = []
    options = CudaBenchOptions(batches=(1, 2), dtypes=("fp32", "bf16"), rounds=3, warmup=1, compile=False)
    data = _run(TINY, options, torch.device("cpu"), log=lambda _: None,
                on_cell=lambda d: seen.append(d["cells_done"]))
    assert seen == [1, 2, 3, 4] and data["complete"] and data["gpu"] is None
    assert [(c["dtype"], c["batch"]) for c in data["ratios"]] == [("fp32", 1), ("fp32", 2), ("bf16", 1), ("bf16", 2)]
    assert len(data["rows"]) == 12 and all(r["images_per_s"] > 0 and r["error"] is None for r in data["rows"])
    fp32 = [c for c in data["ratios"] if c["dtype"] == "fp32"]
    assert all(c["max_abs_diff"] == 0.0 for c in fp32)  # the merge is bit-identical in fp32
    params = {r["model"]: r["params_mb"] for r in data["rows"][:3]}
    assert params["vanilla"] == params["merged"] < params["unmerged"]
    json.dumps(data, allow_nan=False)


def test_options_are_checked() -> None:
    with pytest.raises(M2ptError, match="dtypes must be among fp32, fp16, bf16"):
        CudaBenchOptions(dtypes=("int8",)).check()  # type: ignore[arg-type]
    with pytest.raises(M2ptError, match="rounds >= 1"):
        CudaBenchOptions(rounds=0).check()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none on this machine")
def test_cli_runs_a_tiny_config_on_the_gpu(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["--device", "cuda", "--out", str(out), "--batches", "1", "4", "--rounds", "3", "--warmup", "1",
            "--dtypes", "fp32", "bf16", "--no-compile", *TINY_ARGS]
    assert run_main(main, argv) == 0
    data = json.loads((out / "bench-cuda.json").read_text())
    assert data["complete"] and data["gpu"]["name"] == torch.cuda.get_device_name()
    assert len(data["rows"]) == 12 and all(r["images_per_s"] > 0 for r in data["rows"])
    fp32 = [c for c in data["ratios"] if c["dtype"] == "fp32"]
    assert all(c["max_abs_diff"] < 1e-4 for c in fp32)
    assert "| torch eager | bf16 | 4 |" in capsys.readouterr().out
