"""m2pt-train's error contract: one line naming the cause, exit 2, no checkpoint written."""

from __future__ import annotations

from pathlib import Path

import pytest

from m2pt_deploy.cli.common import run_main
from m2pt_deploy.cli.train import main
from tests.tiny import tiny_spec, write_model


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = run_main(main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _args(target: Path, npz: Path, out: Path, *extra: str) -> list[str]:
    return [str(target), "--data", str(npz), "--out", str(out), "--epochs", "1", "--batch-size", "16",
            "--val-split", "0.25", "--quiet", *extra]


def _assert_bad_input(code: int, err: str, *needles: str) -> None:
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err


def test_trains_and_reports(target: Path, aux: Path, npz: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(_args(target, npz, tmp_path / "run", "--aux", f"audio={aux}"), capsys)
    assert code == 0
    assert "trained 1 epochs" in out and str(tmp_path / "run" / "best.safetensors") in out


def test_aux_of_another_width(target: Path, npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wide = write_model(tmp_path / "wide.safetensors", tiny_spec(embed_dim=128), seed=3)
    code, _, err = _run(_args(target, npz, tmp_path / "run", "--aux", str(wide)), capsys)
    _assert_bad_input(code, err, "wide.safetensors", "architecture mismatch",
                      "blocks.0.attn.qkv: target weight (192, 64) vs aux #0 weight (384, 128)")
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_aux_of_another_depth(target: Path, npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deep = write_model(tmp_path / "deep.safetensors", tiny_spec(depth=3), seed=3)
    code, _, err = _run(_args(target, npz, tmp_path / "run", "--aux", str(deep)), capsys)
    _assert_bad_input(code, err, "deep.safetensors", "target has 2 blocks, aux #0 has 3")


def test_classes_do_not_match_num_classes(target: Path, npz: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(_args(target, npz, tmp_path / "run", "--num-classes", "7"), capsys)
    _assert_bad_input(code, err, str(npz), "the data set has 4 classes, the model head has 7")


def test_new_head_when_num_classes_matches_the_data(tmp_path: Path, npz: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    imagenet_head = write_model(tmp_path / "t1000.safetensors", tiny_spec(num_classes=1000), seed=1)
    code, _, err = _run(_args(imagenet_head, npz, tmp_path / "run"), capsys)
    _assert_bad_input(code, err, "4 classes, the model head has 1000", "--num-classes")
    code, _, _ = _run(_args(imagenet_head, npz, tmp_path / "run", "--num-classes", "4"), capsys)
    assert code == 0


def test_missing_resume_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "run" / "resume.safetensors"
    code, _, err = _run(["--resume", str(missing)], capsys)
    _assert_bad_input(code, err, str(missing), "no such resume file")


def test_existing_run_needs_resume_or_force(target: Path, npz: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(_args(target, npz, tmp_path / "run"), capsys)[0] == 0
    before = (tmp_path / "run" / "last.safetensors").read_bytes()
    code, _, err = _run(_args(target, npz, tmp_path / "run"), capsys)
    _assert_bad_input(code, err, "already holds a run", "--resume")
    assert (tmp_path / "run" / "last.safetensors").read_bytes() == before


@pytest.mark.parametrize(("extra", "needle"), [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--batch-size", "1000"], "larger than the training set"),
    (["--accum-steps", "3"], "does not split into 1 processes × 3"),
])
def test_bad_options(target: Path, npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                     extra: list[str], needle: str) -> None:
    code, _, err = _run(_args(target, npz, tmp_path / "run", *extra), capsys)
    _assert_bad_input(code, err, needle)


def test_missing_data_and_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["--out", str(tmp_path / "r")], capsys)
    _assert_bad_input(code, err, "missing TARGET, --data")
    code, _, err = _run([str(tmp_path / "nope.pth"), "--data", str(tmp_path / "nope.npz"), "--out",
                         str(tmp_path / "r")], capsys)
    _assert_bad_input(code, err, "nope.pth", "no such file")


def test_failed_run_leaves_no_run_folder(target: Path, npz: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_aux.pth"
    code, _, err = _run(_args(target, npz, tmp_path / "runs" / "a", "--aux", str(missing)), capsys)
    _assert_bad_input(code, err, str(missing))
    assert not (tmp_path / "runs").exists()


def test_failed_run_keeps_a_folder_that_was_there(target: Path, npz: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    code, _, err = _run(_args(target, npz, tmp_path / "run", "--aux", str(tmp_path / "no_aux.pth")), capsys)
    _assert_bad_input(code, err, "no_aux.pth")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    code, _, err = _run(_args(target, npz, tmp_path / "empty", "--aux", str(tmp_path / "no_aux.pth")), capsys)
    _assert_bad_input(code, err, "no_aux.pth")
    assert (tmp_path / "empty").is_dir()


def test_resume_takes_the_run_folder(target: Path, npz: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(_args(target, npz, tmp_path / "run"), capsys)[0] == 0
    code, out, _ = _run(["--resume", str(tmp_path / "run"), "--epochs", "2", "--quiet"], capsys)
    assert code == 0 and "trained 2 epochs" in out
    (tmp_path / "empty").mkdir()
    code, _, err = _run(["--resume", str(tmp_path / "empty")], capsys)
    _assert_bad_input(code, err, f"error: {tmp_path / 'empty'}: run folder without resume.safetensors",
                      f"looked for {tmp_path / 'empty' / 'resume.safetensors'}")


def test_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for needle in ("--epochs EPOCHS epochs in all (default: 10;",
                   "--warmup-epochs WARMUP_EPOCHS linear warm-up before the cosine (default: 1.0)",
                   "+ rank under torchrun) (default: 0)", "per output channel (default: scalar)",
                   "layer-wise lr decay, 1 is off;", "(default: attn.qkv attn.proj mlp.fc1 mlp.fc2)"):
        assert needle in text, needle
    assert "(default: None)" not in text and "(default: False)" not in text
