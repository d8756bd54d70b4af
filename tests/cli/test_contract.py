"""The command-line contract (issue 17): every refusal is checked before work, before torch is
imported, in one line naming the file; an artifact appears under its final name only once
verified; Ctrl-C, SIGTERM, a full disk or a read-only folder leave nothing behind and no traceback."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.commands import export

# Runs each command's main in one interpreter, without torch, and reports per case: exit code,
# stderr, and whether torch (or onnx) got imported on the way to the refusal.
_PROBE = r"""
import contextlib, io, json, sys
from m2pt_deploy.cli.common import run_main
import m2pt_deploy.cli.bench, m2pt_deploy.cli.demo, m2pt_deploy.cli.export, m2pt_deploy.cli.merge
import m2pt_deploy.cli.serve, m2pt_deploy.cli.train, m2pt_deploy.cli.verify
out = []
for command, argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = run_main(getattr(m2pt_deploy.cli, command).main, argv)
    out.append({"code": code, "err": err.getvalue(), "heavy": sorted({"torch", "onnx"} & set(sys.modules))})
print(json.dumps(out))
"""


def _refusals(cases: list[tuple[str, list[str]]]) -> list[dict]:
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(cases)], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A real read-only file system (a tmpfs mounted ro) where the machine lets root mount one; else
    /sys, which refuses new files even to root (the reason then reads 'permission denied')."""
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                             capture_output=True).returncode == 0
    yield ro if mounted else Path("/sys/m2pt-test")
    if mounted:
        subprocess.run(["umount", str(ro)], check=True)


@pytest.fixture
def files(tmp_path: Path, m2pt_ckpt: Path) -> dict[str, Path]:
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"\x08\x08\x12\x07pytorch")  # ir_version 8, producer_name: an ONNX model's first bytes
    png = tmp_path / "cat.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    existing = tmp_path / "exists.onnx"
    existing.write_bytes(b"old")
    a_file = tmp_path / "file.pth"
    a_file.write_bytes(b"x")
    return {"ckpt": m2pt_ckpt, "onnx": onnx_file, "png": png, "dir": tmp_path, "existing": existing,
            "file": a_file}


def _one_line(result: dict, *needles: str) -> None:
    lines = result["err"].strip().splitlines()
    assert result["code"] == 2, result
    assert len(lines) == 1 and lines[0].startswith("error: "), result
    assert "Traceback" not in result["err"]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert result["heavy"] == [], f"imported {result['heavy']} before refusing"


def test_wrong_files_are_named_for_what_they_are(files: dict[str, Path]) -> None:
    ckpt = str(files["ckpt"])
    cases = [
        ("export", [str(files["onnx"])]),
        ("export", [str(files["dir"])]),
        ("export", [str(files["png"])]),
        ("merge", [str(files["onnx"])]),
        ("bench", [str(files["png"]), "--out", str(files["dir"] / "b")]),
        ("verify", [ckpt, "--onnx", str(files["png"])]),
        ("verify", [str(files["onnx"]), "--onnx", str(files["onnx"])]),
        ("serve", [ckpt]),
    ]
    expected = [
        (str(files["onnx"]), "is an ONNX model, not a checkpoint", "m2pt-serve"),
        (str(files["dir"]), "is a directory, not a checkpoint file"),
        (str(files["png"]), "is a PNG image, not a checkpoint"),
        (str(files["onnx"]), "is an ONNX model, not a checkpoint"),
        (str(files["png"]), "is a PNG image, not a checkpoint"),
        (str(files["png"]), "is a PNG image, not an ONNX model"),
        (str(files["onnx"]), "is an ONNX model, not a checkpoint"),
        (ckpt, "is a safetensors file, not an .onnx file or a Triton model repository folder", "m2pt-export"),
    ]
    for result, needles in zip(_refusals(cases), expected, strict=True):
        _one_line(result, *needles)


def test_options_that_do_not_apply_are_refused_not_ignored(files: dict[str, Path], tmp_path: Path) -> None:
    ckpt, out = str(files["ckpt"]), str(tmp_path / "o.onnx")
    refused = {
        "--calib-data": ["--calib-data", str(files["dir"])],
        "--verify-images": ["--verify-images", "8"],
        "--int8-target": ["--int8-target", "avx2"],
        "--calib-images": ["--calib-images", "8"],
        "--name": ["--name", "vit"],
        "--max-batch": ["--max-batch", "4"],
        "--instances": ["--instances", "2"],
        "--storage-uri": ["--storage-uri", "s3://b/m"],
        "--workspace": ["--workspace", "2"],
        "--opt-level": ["--opt-level", "3"],
        "--timing-cache": ["--timing-cache", str(tmp_path / "t.cache")],
    }
    results = _refusals([("export", [ckpt, "-o", out, *argv]) for argv in refused.values()])
    for flag, result in zip(refused, results, strict=True):
        _one_line(result, f"{flag} ")
        assert "not" in result["err"]
    assert not Path(out).exists()


def test_bad_values_and_contradictions_are_refused_before_any_work(files: dict[str, Path], tmp_path: Path) -> None:
    ckpt = str(files["ckpt"])
    cases = [
        (["--opset", "16"], "--opset 16: ONNX export needs opset 17 or newer"),
        (["--format", "triton", "--trt-accelerator", "fp16", "-o", str(tmp_path / "repo")],
         "--trt-accelerator needs GPU instances"),
        (["--no-verify", "--report", str(tmp_path / "r.json")], "--report writes the verification report"),
        (["--input-size", "224", "224"], "--input-size takes C H W"),
        (["-o", str(files["existing"])], "output exists; pass --force"),
        (["-o", str(files["file"]) + "/x.onnx"], f"{files['file']} is a file, not a folder"),
        (["-o", "/proc/m2pt-x.onnx"], "not writable (the file system does not take new files)"),
        (["--format", "trt", "--precision", "fp16", "--batch", "8:4:1"], "needs MIN <= OPT <= MAX"),
    ]
    for (_, needle), result in zip(cases, _refusals([("export", [ckpt, *a]) for a, _ in cases]), strict=True):
        _one_line(result, needle)


def test_every_command_refuses_a_read_only_output_at_once(files: dict[str, Path], read_only_dir: Path,
                                                          tmp_path: Path) -> None:
    ckpt = str(files["ckpt"])
    target = read_only_dir / "out"
    cases = [
        ("export", [ckpt, "-o", str(target) + ".onnx"]),
        ("export", [ckpt, "--format", "triton", "-o", str(target)]),
        ("export", [ckpt, "--format", "trt", "-o", str(target) + ".engine"]),
        ("merge", [ckpt, "-o", str(target) + ".safetensors"]),
        ("bench", [ckpt, "--out", str(target)]),
        ("demo", ["--out", str(target)]),
        ("train", [ckpt, "--data", str(files["dir"]), "--out", str(target)]),
        ("verify", [ckpt, "--onnx", str(files["onnx"]), "--report", str(target) + ".json"]),
    ]
    for result in _refusals(cases):
        _one_line(result, "not writable", str(read_only_dir))


def test_resume_refuses_the_options_it_would_ignore(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    cases = [("train", ["--resume", str(run), *argv]) for argv in
             (["--lr", "0.1"], ["--batch-size", "8"], ["--data", "/nope"], ["--force"])]
    for result, flag in zip(_refusals(cases), ("--lr", "--batch-size", "--data", "--force"), strict=True):
        _one_line(result, f"{flag} does not apply with --resume")


def _export_process(argv: list[str], *, before: str = "", **kwargs) -> subprocess.Popen:
    # NOTE a test run started in the background by a non-interactive shell inherits SIGINT ignored
    # (POSIX), and Python then installs no KeyboardInterrupt handler; a user's Ctrl-C meets a
    # foreground m2pt-export, so the child starts with SIGINT as a terminal would give it.
    code = ("import signal, sys, time\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n" + before +
            "from m2pt_deploy.cli.export import entrypoint\nsys.argv[0] = 'm2pt-export'\nentrypoint()\n")
    return subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=Path(__file__).parents[2], **kwargs)


# A verification that takes long enough to be interrupted: the real one, after a pause.
_SLOW_VERIFY = """
import m2pt_deploy.verify as v
_real = v.verify_onnx
def _slow(*a, **k):
    print("VERIFYING", file=sys.stderr, flush=True)
    time.sleep(60)
    return _real(*a, **k)
v.verify_onnx = _slow
"""


@pytest.mark.parametrize(("sig", "code", "word"), [(signal.SIGINT, 130, "interrupted"),
                                                   (signal.SIGTERM, 143, "terminated")], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_verification_leaves_nothing(m2pt_ckpt: Path, tmp_path: Path, sig: int, code: int,
                                                    word: str) -> None:
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    proc = _export_process([str(m2pt_ckpt), "-o", str(out)], before=_SLOW_VERIFY)
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + 120
    while "VERIFYING" not in seen and time.monotonic() < deadline:
        seen += proc.stderr.readline()
    assert "VERIFYING" in seen, seen
    assert any(out.parent.iterdir()), "the export is written (staged) before verification"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert word in err and "Traceback" not in err
    assert list(out.parent.iterdir()) == [], "neither the final name nor a temporary file is left"


def test_a_full_disk_is_one_line_and_leaves_nothing(m2pt_ckpt: Path, tmp_path: Path) -> None:
    """A file-size limit stands in for a full disk: the write fails (EFBIG) mid-artifact."""
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))

    proc = _export_process([str(m2pt_ckpt), "-o", str(out)], preexec_fn=limit)
    _, err = proc.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "too large" in lines[0], lines[0]
    assert list(out.parent.iterdir()) == []


def test_no_verify_says_the_file_is_not_verified(m2pt_ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.onnx"
    code, stdout, err = export([str(m2pt_ckpt), "-o", str(out), "--no-verify"], capsys)
    assert code == 0 and out.is_file(), err
    assert f"wrote {out} (not verified: --no-verify)" in stdout


def test_a_failed_verification_keeps_the_file_under_a_name_that_says_so(m2pt_ckpt: Path, tmp_path: Path,
                                                                        capsys, monkeypatch) -> None:
    import dataclasses

    from m2pt_deploy.verify import tolerance

    # No export reaches 101% top-1 agreement: the failing branch, deterministically.
    impossible = dataclasses.replace(tolerance.TOLERANCES["fp32"], min_top1=1.01)
    monkeypatch.setitem(tolerance.TOLERANCES, "fp32", impossible)
    out, report = tmp_path / "m.onnx", tmp_path / "m.json"
    code, _, err = export([str(m2pt_ckpt), "-o", str(out), "--report", str(report)], capsys)
    kept = tmp_path / "m.unverified.onnx"
    assert code == 1, err
    assert f"verification FAILED; the export is kept at {kept}" in err
    assert kept.is_file() and not out.exists()
    assert json.loads(report.read_text())["onnx"] == str(kept)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.unverified.onnx", "tiny_m2pt.safetensors"]


def test_trt_says_at_the_start_that_tensorrt_is_missing(m2pt_ckpt: Path, tmp_path: Path, capsys) -> None:
    engine = tmp_path / "m.engine"
    code, _, err = export([str(m2pt_ckpt), "--format", "trt", "--precision", "fp16", "-o", str(engine)], capsys)
    notice = err.find("TensorRT is not importable here")
    assert notice != -1 and notice < err.find("exporting"), err
    assert (tmp_path / "m.fp16.onnx").is_file()


def test_unexpected_errors_are_one_line_unless_verbose(m2pt_ckpt: Path, tmp_path: Path, capsys,
                                                       monkeypatch) -> None:
    from m2pt_deploy.cli.common import EXIT_INTERNAL
    from m2pt_deploy.pipelines import export as pipeline

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(pipeline, "_export_onnx", broken)
    code, _, err = export([str(m2pt_ckpt), "-o", str(tmp_path / "m.onnx")], capsys)
    assert code == EXIT_INTERNAL and err.strip().count("\n") == 0 and "Traceback" not in err
    assert "internal error: ZeroDivisionError: a bug" in err
    with pytest.raises(ZeroDivisionError):
        export([str(m2pt_ckpt), "-o", str(tmp_path / "m.onnx"), "--verbose"], capsys)
    assert os.listdir(tmp_path) == ["tiny_m2pt.safetensors"]


def test_a_damaged_onnx_file_is_one_line_without_protobufs_words(m2pt_ckpt: Path, tmp_path: Path, capsys) -> None:
    from m2pt_deploy.cli.common import run_main
    from m2pt_deploy.cli.verify import main

    damaged = tmp_path / "cut.onnx"
    damaged.write_bytes(b"\x08\x08\x12\xff\xff\xff\xff")  # a field whose length runs past the end
    code = run_main(main, [str(m2pt_ckpt), "--onnx", str(damaged)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"error: {damaged}: not a readable ONNX model (damaged or truncated protobuf)" in err
    assert "Error parsing" not in err and "ModelProto" not in err


def test_bench_refuses_options_of_the_other_device(files: dict[str, Path], tmp_path: Path) -> None:
    out = str(tmp_path / "b")
    cases = [
        (["--dtypes", "fp16"], "--dtypes applies to --device cuda, not cpu"),
        (["--device", "cuda", "--no-int8"], "--no-int8 applies to --device cpu, not cuda"),
        (["--device", "cuda", "--calib-images", "8"], "--calib-images applies to --device cpu, not cuda"),
        (["--device", "cuda", "--accuracy-epochs", "1"], "--accuracy-epochs applies to --device cpu, not cuda"),
        ([str(files["ckpt"]), "--eval-images", "8"], "--eval-images applies with --data"),
        (["--npoints", "512"], "--npoints: family settings need a CHECKPOINT or a random model of that family"),
        (["--ema"], "--ema needs a CHECKPOINT"),
        (["--family", "videomae", "--arch", "vit_small_patch16_224"], "--arch and --model-kwargs are for the random"),
    ]
    for (_, needle), result in zip(cases, _refusals([("bench", [*a, "--out", out]) for a, _ in cases]),
                                   strict=True):
        _one_line(result, needle)
    assert not Path(out).exists()
