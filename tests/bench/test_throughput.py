"""m2pt-bench's side-by-side table: rows, failures, goals and a tiny end-to-end run. No timings asserted."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from m2pt_deploy.bench.cpu import RUNTIMES
from m2pt_deploy.bench.goals import goals
from m2pt_deploy.bench.throughput import Variant, reset_peak_rss, rows_for_batch, run_variants
from m2pt_deploy.cli.bench import main
from m2pt_deploy.cli.common import run_main
from tests.tiny import TINY

FEED = {"x": np.zeros((2, 1), np.float32)}
FEED4 = {"x": np.zeros((4, 1), np.float32)}


class Fake(BaseRunner):
    def __init__(self, name: str, seconds: float, *, fail: bool = False, grow_mb: int = 0) -> None:
        super().__init__(name=name)
        self.seconds, self.fail, self.grow_mb = seconds, fail, grow_mb

    def activate_impl(self) -> None:
        if self.fail:
            raise RuntimeError("no C++ compiler\nInductor gave up")
        # Touched memory, so RSS really grows by about grow_mb.
        self.buffer = np.ones(self.grow_mb * 2**18, np.float32)

    def get_input_metadata_impl(self) -> TensorMetadata:
        return TensorMetadata().add("x", np.float32, (None, 1))

    def infer_impl(self, feed_dict):
        self.inference_time = self.seconds
        return OrderedDict(y=feed_dict["x"])

    def deactivate_impl(self) -> None:
        self.buffer = None


class Logged(Fake):
    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__(name, 0.01)
        self.log = log

    def infer_impl(self, feed_dict):
        self.log.append(self.name)
        return super().infer_impl(feed_dict)


def test_a_variant_that_fails_to_start_is_a_row_saying_why() -> None:
    variants = [Variant("torch eager", "merged", Fake("a", 0.02)),
                Variant("torch.compile", "merged", Fake("b", 0.01, fail=True)),
                Variant("ONNX Runtime", "merged", Fake("c", 0.01))]
    times, started = run_variants(variants, {2: FEED, 4: FEED4}, rounds=3, warmup=1)
    for batch in (2, 4):
        rows = rows_for_batch(variants, batch, times[batch], started, eager_runtime="torch eager")
        by_runtime = {r.runtime: r for r in rows}
        failed = by_runtime["torch.compile"]
        assert failed.images_per_s is None and failed.error == "RuntimeError: Inductor gave up"
        ok = by_runtime["ONNX Runtime"]
        assert ok.images_per_s == pytest.approx(batch / 0.01) and ok.median_ms == pytest.approx(10.0)
        assert ok.vs_eager == pytest.approx(2.0)  # per-round eager time / its time
        assert len(times[batch]["torch eager / merged"]) == 3 and "torch.compile / merged" not in times[batch]


def test_rounds_rotate_over_the_variants_after_warmup() -> None:
    log: list[str] = []
    variants = [Variant("r", name, Logged(name, log)) for name in "abc"]
    run_variants(variants, {2: FEED}, rounds=3, warmup=1)
    assert log[:3] == ["a", "b", "c"]
    assert log[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


@pytest.mark.skipif(not reset_peak_rss(), reason="this kernel does not let a process reset its peak RSS")
def test_peak_memory_is_counted_per_variant() -> None:
    variants = [Variant("r", "small", Fake("s", 0.01, grow_mb=1)),
                Variant("r", "large", Fake("l", 0.01, grow_mb=64), resident_bytes=10 * 2**20)]
    _, started = run_variants(variants, {2: FEED}, rounds=1, warmup=1)
    small, large = started[("r / small", 2)][0], started[("r / large", 2)][0]
    assert small is not None and large is not None
    assert large >= 64 + 10 - 4 > small


def _data(**rows: float) -> dict:
    def row(runtime, model, batch, ips, vs):
        return {"runtime": runtime, "model": model, "batch": batch, "images_per_s": ips, "vs_eager": vs,
                "error": None}
    return {
        "spec": {"arch": "vit_base_patch16_224", "model_kwargs": {}, "input_size": [3, 224, 224]},
        "machine": {"fp32_matmul_peak_gflops": 100.0},
        "settings": {"batches": [8], "gflop_per_image": 10.0},
        "rows": [row("ONNX Runtime optimized", "merged", 8, rows["fast"], 1.3),
                 row("ONNX Runtime int8", "merged", 8, rows["int8"], 4.0)],
        "comparisons": [{"runtime": "ONNX Runtime", "batch": 8, "candidate": "merged", "baseline": "vanilla",
                         "ratio": rows["ratio"]}],
        "export": {"commands": {"onnx": {"wall_s": 12.0, "peak_rss_mb": 5000.0}}},
        "int8_agreement": {"top1_rate": 0.995},
        "accuracy": None,
    }


def test_goals_report_each_figure_against_its_threshold() -> None:
    met = {g["goal"]: g["met"] for g in goals(_data(fast=9.5, int8=30.0, ratio=1.02))}
    assert met["ONNX Runtime optimized ≥ 1.25× torch eager, batch 8"] is True
    assert met["ONNX Runtime optimized within 10% of the fp32 matmul peak, batch 8"] is True  # 95 of 100
    assert met["int8 ≥ 3× ONNX Runtime fp32 (optimized), batch 8"] is True
    assert met["merged / vanilla latency 1.00 ± 0.03, ONNX Runtime, batch 8"] is True
    assert met["m2pt-export (onnx) ≤ 30 s"] is True
    assert met["m2pt-export (onnx) peak RSS ≤ 4 GB"] is False
    assert met["int8 accuracy delta on labelled data reported"] is None
    worse = {g["goal"]: g["met"] for g in goals(_data(fast=8.0, int8=20.0, ratio=1.05))}
    assert worse["ONNX Runtime optimized within 10% of the fp32 matmul peak, batch 8"] is False
    assert worse["int8 ≥ 3× ONNX Runtime fp32 (optimized), batch 8"] is False
    assert worse["merged / vanilla latency 1.00 ± 0.03, ONNX Runtime, batch 8"] is False


def test_tiny_bench_writes_json_markdown_and_chart(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench"
    argv = ["--arch", TINY.arch, "--model-kwargs", json.dumps(TINY.model_kwargs), "--batches", "1", "2",
            "--rounds", "2", "--warmup", "0", "--calib-images", "8", "--accuracy-epochs", "1", "--out", str(out)]
    code = run_main(main, argv)
    stdout = capsys.readouterr().out
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md", "bench.png"]
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "bench.json").read_text())
    assert data["machine"]["cpu"] and len(data["machine"]["load_average_before"]) == 3
    assert data["machine"]["fp32_matmul_peak_gflops"] > 0 and data["settings"]["gflop_per_image"] > 0
    expected = {(rt, model, b) for b in (1, 2) for rt in RUNTIMES for model in ("vanilla", "merged")}
    expected |= {(rt, "unmerged", b) for b in (1, 2) for rt in ("torch eager", "torch.compile")}
    rows = {(r["runtime"], r["model"], r["batch"]): r for r in data["rows"]}
    assert set(rows) == expected
    for key, r in rows.items():
        if r["error"]:  # only torch.compile may fail (no compiler), and then it says why
            assert key[0] == "torch.compile" and r["error"], r
            continue
        for field in ("images_per_s", "median_ms", "p95_ms", "vs_eager"):
            assert math.isfinite(r[field]) and r[field] > 0, (key, field, r)
        assert r["p25_ms"] <= r["median_ms"] <= r["p75_ms"], r  # the chart's error bars
    pairs = {(c["runtime"], c["batch"], c["candidate"], c["baseline"]) for c in data["comparisons"]}
    assert {("ONNX Runtime optimized", 1, "merged", "vanilla"), ("torch eager", 2, "unmerged", "merged")} <= pairs
    assert all(d == [] for d in data["export"]["graph_differences_merged_vs_vanilla"].values())
    for cost in data["export"]["commands"].values():
        assert cost["returncode"] == 0 and cost["peak_rss_mb"] > 100 and cost["wall_s"] > 0
    assert set(data["export"]["session_startup_s"]) == {
        "ONNX Runtime", "ONNX Runtime optimized", "ONNX Runtime int8", "ONNX Runtime optimized, re-optimized at load"}
    assert data["int8_agreement"]["top1_total"] == 64
    assert 0 <= data["accuracy"]["fp32_top1"] <= 1 and data["accuracy"]["images"] == 359
    assert {g["goal"] for g in data["goals"]} >= {"int8 top-1 agreement with fp32 ≥ 99% (photo tiles)"}
    assert data["settings"]["error_bars"].startswith("p25–p75 of the rounds")
    assert data["subject"]["kind"] == "random" and data["formats"] is None
    md = (out / "bench.md").read_text()
    assert md.startswith(f"Machine: {data['machine']['cpu']}")
    assert md in stdout


def test_a_figure_above_the_measured_peak_is_not_a_pass() -> None:
    from m2pt_deploy.bench.cpu_report import goal_table
    from m2pt_deploy.bench.goals import ABOVE_PEAK

    data = _data(fast=14.4, int8=60.0, ratio=1.0)  # 144 GFLOP/s against a measured peak of 100
    (peak,) = [g for g in goals(data) if g["goal"].startswith("ONNX Runtime optimized within 10%")]
    assert peak["met"] is None and peak["verdict"] == ABOVE_PEAK and peak["shown"] == "144% of peak"
    lines = [line for line in goal_table(data).splitlines() if "within 10% of the fp32 matmul peak" in line]
    assert lines == [f"| ONNX Runtime optimized within 10% of the fp32 matmul peak, batch 8 | 144% of peak | "
                     f"{ABOVE_PEAK} |"]
    exactly = _data(fast=10.0, int8=60.0, ratio=1.0)  # 100%: at the peak, still judged
    assert {g["goal"]: g["met"] for g in goals(exactly)}[peak["goal"]] is True


@pytest.mark.parametrize("spec", [
    {"arch": "vit_tiny_patch16_224", "model_kwargs": {"img_size": 32, "depth": 2}, "input_size": [3, 32, 32]},
    {"arch": "vit_base_patch16_224", "model_kwargs": {"depth": 2}, "input_size": [3, 224, 224]},
    {"arch": "vit_base_patch16_384", "model_kwargs": {}, "input_size": [3, 384, 384]},
    {"arch": "unknown", "model_kwargs": {"num_classes": 10}, "input_size": [3, 224, 224]},
])
def test_goals_of_other_architectures_leave_out_the_vit_b16_goals(spec: dict) -> None:
    from m2pt_deploy.bench.cpu_report import goal_table

    data = {**_data(fast=9.5, int8=30.0, ratio=1.02), "spec": spec}
    shown = [g["goal"] for g in goals(data)]
    assert shown == ["int8 top-1 agreement with fp32 ≥ 99% (photo tiles)",
                     "int8 accuracy delta on labelled data reported",
                     "merged / vanilla latency 1.00 ± 0.03, ONNX Runtime, batch 8"]
    table = goal_table(data)
    assert "ViT-B/16" not in table.split("Not shown")[0] and "≥ 1.25×" not in table.split("Not shown")[0]
    assert "Not shown: the ViT-B/16 goals" in table
    assert "Not shown" not in goal_table(_data(fast=9.5, int8=30.0, ratio=1.02))


def test_vit_b16_goals_hold_for_any_head() -> None:
    from m2pt_deploy.bench.goals import is_vit_b16

    base = {"arch": "vit_base_patch16_224", "model_kwargs": {}, "input_size": (3, 224, 224)}
    assert is_vit_b16(base) and is_vit_b16({**base, "model_kwargs": {"num_classes": 10, "global_pool": "avg"}})
    assert not is_vit_b16({**base, "model_kwargs": {"embed_dim": 384}})
    assert not is_vit_b16({**base, "input_size": (1, 224, 224)})
