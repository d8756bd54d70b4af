"""m2pt-serve-bench runs bounded and reports what it measured (no timing is asserted here)."""

from __future__ import annotations

import json

from m2pt_deploy.cli.common import EXIT_BAD_INPUT, EXIT_OK, run_main
from m2pt_deploy.cli.serve_bench import main


def test_bench_reports_every_level_and_mode(tiny_onnx, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = run_main(main, [str(tiny_onnx), "--clients", "1", "3", "--requests", "12",
                           "--duration-s", "30", "--warmup", "2", "-o", str(out)])
    printed = capsys.readouterr().out
    assert code == EXIT_OK
    report = json.loads(out.read_text())
    assert report["machine"]["usable_cpus"] >= 1 and report["machine"]["cpu"]
    assert report["model"]["name"] == "vit" and report["model"]["input_shape"] == [1, 3, 32, 32]
    assert [level["clients"] for level in report["levels"]] == [1, 3]
    for level in report["levels"]:
        for mode in ("off", "on"):
            result = level[mode]
            assert result["requests"] == 12 and result["errors"] == 0
            assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]
        assert level["speedup"] == round(level["on"]["throughput_rps"] / level["off"]["throughput_rps"], 3)
    assert report["errors"] == 0
    assert all(v > 0 for v in report["peak_rss_mb"].values())
    assert "| 3 | on |" in printed


def test_bench_refuses_bad_input(tmp_path, tiny_onnx, capsys):
    missing = tmp_path / "none.onnx"
    assert run_main(main, [str(missing)]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip() == f"error: {missing}: no such file or directory"
    assert run_main(main, [str(tiny_onnx), "--max-batch", "1"]) == EXIT_BAD_INPUT
    assert "--max-batch at least 2" in capsys.readouterr().err
