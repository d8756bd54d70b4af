"""m2pt-serve-bench and m2pt_deploy.bench.serving run bounded and report what they measured (no
timing is asserted here), for HTTP with batching off and on and for gRPC."""

from __future__ import annotations

import json
import sys

from m2pt_deploy.bench.serving import MODES, run_serving_benchmark, serving_table
from m2pt_deploy.cli.common import EXIT_BAD_INPUT, EXIT_OK, run_main
from m2pt_deploy.cli.serve_bench import main


def check_report(report, clients, requests):
    assert report["machine"]["usable_cpus"] >= 1 and report["machine"]["cpu"]
    assert report["model"]["name"] == "vit" and report["model"]["input_shape"] == [1, 3, 32, 32]
    assert [level["clients"] for level in report["levels"]] == clients
    for level in report["levels"]:
        for mode in MODES:
            result = level[mode]
            assert result["requests"] == requests and result["errors"] == 0, (mode, result)
            assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]
        assert level["speedup"] == round(level["on"]["throughput_rps"] / level["off"]["throughput_rps"], 3)
        assert level["grpc_vs_http"] == round(level["grpc"]["throughput_rps"] / level["on"]["throughput_rps"], 3)
    assert report["errors"] == 0
    assert set(report["peak_rss_mb"]) == set(MODES) and all(v > 0 for v in report["peak_rss_mb"].values())


def test_bench_reports_every_level_and_mode(tiny_onnx, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = run_main(main, [str(tiny_onnx), "--clients", "1", "3", "--requests", "12",
                           "--duration-s", "30", "--warmup", "2", "-o", str(out)])
    printed = capsys.readouterr().out
    assert code == EXIT_OK
    report = json.loads(out.read_text())
    check_report(report, [1, 3], 12)
    assert "| 3 | HTTP, on |" in printed and "| 3 | gRPC, on |" in printed
    assert "gRPC batching on" in printed
    assert printed.strip() == serving_table(report)


def test_library_function_is_the_harness(tiny_onnx):
    report = run_serving_benchmark(str(tiny_onnx), serve_command=(sys.executable, "-m", "m2pt_deploy.cli.serve"),
                                   clients=(2,), requests=6, duration_s=20, rounds=2,
                                   warmup=1, progress=False)
    check_report(report, [2], 6)
    assert report["settings"]["rounds"] == 2 and "gRPC" in report["settings"]["protocol"]


def test_bench_refuses_bad_input(tmp_path, tiny_onnx, capsys):
    missing = tmp_path / "none.onnx"
    assert run_main(main, [str(missing)]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip() == f"error: {missing}: no such file or directory"
    assert run_main(main, [str(tiny_onnx), "--max-batch", "1"]) == EXIT_BAD_INPUT
    assert "--max-batch at least 2" in capsys.readouterr().err
