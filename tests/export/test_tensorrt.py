from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from m2pt_deploy.cli.engine_info import main
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.engine_info import (
    EngineInfo,
    check_compatible,
    check_engine_file,
    read_engine_info,
    sidecar_path,
    write_engine_info,
    write_sidecar,
)
from m2pt_deploy.export.graph import prepare_graph
from m2pt_deploy.export.onnx import BatchSpec, parse_batch
from m2pt_deploy.export.profiles import ShapeProfile, profile_for
from m2pt_deploy.export.tensorrt import (
    BuildOptions,
    Platform,
    api_path_for,
    build_engine_from_onnx,
    check_precision_supported,
    commands_path,
    engine_chain,
)
from m2pt_deploy.fileio import sha256_file
from m2pt_deploy.metadata import read_metadata
from tests.export.test_precision import fp32_graph  # noqa: F401 - shared module fixture

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ShapeProfile("pixel_values", (1, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32))
NO_TRT = Platform(None, None, None)
A100 = Platform("11.4.0.106", "NVIDIA A100-SXM4-80GB", (8, 0))


def _shapes(profile) -> dict[str, tuple]:
    return {name: (tuple(s.min), tuple(s.opt), tuple(s.max)) for name, s in profile.items()}


@pytest.fixture
def onnx_file(fp32_graph, tmp_path) -> Path:  # noqa: F811
    path = tmp_path / "tiny.fp32.onnx"
    onnx.save_model(fp32_graph, path)
    return path


def test_profile_from_graph_and_batch(fp32_graph) -> None:  # noqa: F811
    profile = profile_for(fp32_graph, parse_batch("1:8:32"))
    assert profile == PROFILE
    assert profile.trtexec_args()[2] == "--maxShapes=pixel_values:32x3x32x32"
    assert profile.polygraphy_args()[:2] == ["--trt-min-shapes", "'pixel_values:[1,3,32,32]'"]
    assert _shapes(profile.to_polygraphy()) == {"pixel_values": ((1, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32))}


def test_profile_refuses_min_above_opt_above_max() -> None:
    with pytest.raises(M2ptError, match="needs MIN <= OPT <= MAX, got 32 > 8 > 1"):
        parse_batch("32:8:1")
    with pytest.raises(M2ptError, match=r"needs 1 <= MIN <= OPT <= MAX in every dimension"):
        ShapeProfile("x", (4, 3), (2, 3), (8, 3))


def test_profile_refuses_a_range_on_a_fixed_batch_graph(fp32_graph) -> None:  # noqa: F811
    fixed = onnx.ModelProto()
    fixed.CopyFrom(fp32_graph)
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    assert profile_for(fixed, BatchSpec(4, 4, 4)).max_batch == 4
    with pytest.raises(M2ptError, match="exported for batch 4 only"):
        profile_for(fixed, BatchSpec(1, 4, 8))


def test_batch_above_profile_max_names_the_profile() -> None:
    PROFILE.check_batch(32)
    with pytest.raises(M2ptError, match=r"m\.engine: batch 33 is above the profile's MAX \(engine profile 1:8:32\)"):
        PROFILE.check_batch(33, source="m.engine")


def test_graph_preparation_folds_constants_and_names_io(fp32_graph) -> None:  # noqa: F811
    from onnx import TensorProto, helper

    model = onnx.ModelProto()
    model.CopyFrom(fp32_graph)
    model.graph.input[0].name = "images"
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name == "pixel_values":
                node.input[k] = "images"
    # a constant-only subgraph feeding nothing but itself: 2 + 3 -> 5, then dead
    two = helper.make_tensor("v", TensorProto.FLOAT, [], [2.0])
    model.graph.node.insert(0, helper.make_node("Constant", [], ["c2"], value=two))
    model.graph.node.insert(1, helper.make_node("Add", ["c2", "c2"], ["c4"]))
    # The input keeps the name its family's export gave it ("points", "input_values", ...) unless told.
    assert [i.name for i in prepare_graph(model).graph.input] == ["images"]
    prepared = prepare_graph(model, input_name="pixel_values")
    assert [i.name for i in prepared.graph.input] == ["pixel_values"]
    assert [o.name for o in prepared.graph.output] == ["logits"]
    assert "c4" not in {o for n in prepared.graph.node for o in n.output}
    assert len(prepared.graph.node) == len(fp32_graph.graph.node)
    assert len(prepared.metadata_props) == len(fp32_graph.metadata_props) > 0
    onnx.checker.check_model(prepared, full_check=True)


@pytest.mark.parametrize("version, path", [("11.4.0.106", "strong-typing"), ("10.13.0.35", "builder-flags")])
def test_api_path_by_tensorrt_major(version, path) -> None:
    assert api_path_for(version) == path


def test_old_tensorrt_is_refused() -> None:
    with pytest.raises(M2ptError, match="TensorRT 8.6.1 is too old"):
        api_path_for("8.6.1")


def test_fp8_before_ada_is_refused_with_the_gpu_named() -> None:
    with pytest.raises(M2ptError, match=r"--precision fp8 needs compute capability 8.9 .*NVIDIA A100-SXM4-80GB is 8.0"):
        check_precision_supported("fp8", A100)
    check_precision_supported("bf16", A100)
    check_precision_supported("fp8", Platform("11.4", "NVIDIA H100", (9, 0)))


@pytest.mark.parametrize("kwargs, message", [
    ({"opt_level": 7}, "--opt-level 7: TensorRT's builder optimization level is 0 to 5"),
    ({"workspace_gb": 0}, "--workspace 0: must be a positive number of GiB"),
    ({"precision": "int4"}, "--precision 'int4': choose one of"),
])
def test_build_options_are_checked(kwargs, message) -> None:
    args = {"precision": "fp16", "profile": PROFILE, **kwargs}
    with pytest.raises(M2ptError, match=message.replace("(", r"\(").replace(")", r"\)")):
        BuildOptions(**args)


@pytest.mark.parametrize("api_path, flags", [("strong-typing", set()), ("builder-flags", {"fp16"})])
def test_loader_chain_is_assembled_without_tensorrt(onnx_file, tmp_path, api_path, flags) -> None:
    options = BuildOptions("fp16", PROFILE, workspace_gb=2, timing_cache=tmp_path / "t.cache", opt_level=3)
    chain = engine_chain(onnx_file, tmp_path / "m.engine", options, api_path=api_path)
    assert chain.network.path == str(onnx_file)
    assert chain.network.strongly_typed == (api_path == "strong-typing")
    config = chain.config._config  # PostprocessConfig wraps CreateConfig
    assert {f for f in ("fp16", "bf16", "int8", "fp8") if getattr(config, f)} == flags
    assert config.builder_optimization_level == 3
    assert [_shapes(p) for p in config.profiles] == [_shapes(PROFILE.to_polygraphy())]
    assert chain.config._func.workspace_bytes == 2 * 2**30
    assert chain.save.path == str(tmp_path / "m.engine")


def test_building_the_chain_does_not_import_tensorrt(onnx_file, tmp_path) -> None:
    code = f"""
import sys
from m2pt_deploy.export.tensorrt import BuildOptions, engine_chain
from m2pt_deploy.export.profiles import ShapeProfile
p = ShapeProfile("pixel_values", (1, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32))
engine_chain({str(onnx_file)!r}, {str(tmp_path / 'm.engine')!r}, BuildOptions("int8", p), api_path="strong-typing")
assert "tensorrt" not in sys.modules, "tensorrt was imported"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr


def test_without_tensorrt_the_build_leaves_onnx_and_commands(onnx_file, tmp_path) -> None:
    engine = tmp_path / "m.engine"
    with pytest.raises(M2ptError) as err:
        build_engine_from_onnx(onnx_file, engine, precision="fp16", batch=parse_batch("1:8:32"),
                               workspace_gb=1, opt_level=4, platform=NO_TRT)
    message = str(err.value)
    assert "TensorRT is not installed" in message and str(commands_path(engine)) in message
    assert "\n" not in message and not engine.exists() and onnx_file.is_file()
    script = commands_path(engine).read_text()
    lines = {line.split(")", 1)[0].strip(): line for line in script.splitlines() if line.startswith("  ")}
    assert "--stronglyTyped" in lines["trtexec*"] and "--fp16" not in lines["trtexec*"]
    assert "--fp16" in lines["trtexec10"] and "--fp16" in lines["polygraphy10"]
    # The ONNX is named relative to the script's folder, so the folder can travel (issue 12).
    assert f'ONNX="$HERE"/{onnx_file.name}' in script.splitlines()
    for key in ("trtexec10", "trtexec*"):
        assert '--onnx="$ONNX"' in lines[key] and "--maxShapes=pixel_values:32x3x32x32" in lines[key]
        assert "--memPoolSize=workspace:1024M" in lines[key] and "--builderOptimizationLevel=4" in lines[key]
    assert "--strongly-typed" in lines["polygraphy*"] and "'pixel_values:[8,3,32,32]'" in lines["polygraphy*"]
    assert subprocess.run(["sh", "-n", str(commands_path(engine))]).returncode == 0


def test_without_a_gpu_the_message_says_so(onnx_file, tmp_path) -> None:
    with pytest.raises(M2ptError, match="no CUDA GPU is visible"):
        build_engine_from_onnx(onnx_file, tmp_path / "m.engine", precision="fp32", batch=BatchSpec(1, 1, 4),
                               platform=Platform("11.4.0", None, None))


def _fake_engine(tmp_path: Path) -> tuple[Path, EngineInfo]:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\x00\x01ftrt" + os.urandom(64))
    info = EngineInfo("11.4.0.106", "strong-typing", "NVIDIA H100 80GB HBM3", (9, 0), "fp16", PROFILE,
                      "a" * 64, sha256_file(engine), {"m2pt_deploy.arch": "vit_tiny_patch16_224"})
    write_engine_info(engine, info)
    return engine, info


def test_sidecar_round_trip_and_tamper_check(tmp_path) -> None:
    engine, info = _fake_engine(tmp_path)
    assert read_engine_info(engine) == info
    assert json.loads(sidecar_path(engine).read_text())["compute_capability"] == [9, 0]
    engine.write_bytes(engine.read_bytes() + b"x")
    with pytest.raises(M2ptError, match="engine does not match its sidecar m.engine.json"):
        read_engine_info(engine)


def test_engine_without_sidecar_is_refused(tmp_path) -> None:
    engine = tmp_path / "lone.engine"
    engine.write_bytes(b"\x00plan")
    with pytest.raises(M2ptError, match="no sidecar lone.engine.json beside the engine"):
        read_engine_info(engine)


def test_other_tensorrt_or_gpu_is_refused_naming_which(tmp_path) -> None:
    _, info = _fake_engine(tmp_path)
    with pytest.raises(M2ptError, match="built with TensorRT 11.4.0.106 but this machine has TensorRT 10.13.0.35"):
        check_compatible(info, tensorrt_version="10.13.0.35", gpu_name="NVIDIA H100 80GB HBM3",
                         compute_capability=(9, 0))
    with pytest.raises(M2ptError, match=r"for NVIDIA H100 80GB HBM3 \(sm_90\) but this GPU is NVIDIA A100 \(sm_80\)"):
        check_compatible(info, tensorrt_version="11.4.0.106", gpu_name="NVIDIA A100", compute_capability=(8, 0))
    check_compatible(info, tensorrt_version="11.4.0.106", gpu_name="NVIDIA H100 PCIe", compute_capability=(9, 0))


def test_files_that_are_not_engines_are_refused(onnx_file, tmp_path) -> None:
    renamed = tmp_path / "model.engine"
    renamed.write_bytes(onnx_file.read_bytes())
    with pytest.raises(M2ptError, match="is an ONNX model, not a TensorRT engine"):
        check_engine_file(renamed)
    empty = tmp_path / "empty.engine"
    empty.write_bytes(b"")
    with pytest.raises(M2ptError, match="engine file is empty"):
        check_engine_file(empty)
    ckpt = tmp_path / "ckpt.engine"
    torch.save({"w": torch.zeros(1)}, ckpt)
    with pytest.raises(M2ptError, match="is a zip archive"):
        check_engine_file(ckpt)
    from safetensors.torch import save_file

    st = tmp_path / "w.engine"
    save_file({"w": torch.zeros(2)}, st)
    with pytest.raises(M2ptError, match="is a safetensors file"):
        check_engine_file(st)


# A stand-in GPU machine for the build script: fake trtexec and nvidia-smi on PATH, a fake
# `tensorrt` module on PYTHONPATH. They record their arguments; nothing is built.
FAKE_TRTEXEC = r"""#!/usr/bin/env bash
printf '%s\0' CALL trtexec "$@" >> "$FAKE_LOG"
onnx="" out=""
for arg in "$@"; do
  case "$arg" in --onnx=*) onnx="${arg#--onnx=}" ;; --saveEngine=*) out="${arg#--saveEngine=}" ;; esac
done
[ -f "$onnx" ] || { echo "fake trtexec: no ONNX at $onnx" >&2; exit 1; }
printf 'fake TensorRT plan\n' > "$out"
[ -z "${FAKE_FAIL:-}" ] || { echo "fake trtexec: build failed" >&2; exit 1; }
"""
FAKE_POLYGRAPHY = r"""#!/usr/bin/env bash
printf '%s\0' CALL polygraphy "$@" >> "$FAKE_LOG"
[ "$1 $3 $4 $5" = "convert --convert-to trt -o" ] || { echo "fake polygraphy: unexpected $*" >&2; exit 1; }
[ -f "$2" ] || { echo "fake polygraphy: no ONNX at $2" >&2; exit 1; }
printf 'fake TensorRT plan\n' > "$6"
"""
FAKE_NVIDIA_SMI = r"""#!/usr/bin/env bash
printf '%s\0' "$@" > "$FAKE_SMI_LOG"
echo "NVIDIA H100 80GB HBM3, 9.0"
"""
FAKE_TRT_VERSION = "10.13.0.35"
# A GPU UUID no machine has: torch sees no CUDA device anywhere, so the GPU comes from nvidia-smi.
HIDDEN_GPU = "GPU-00000000-0000-0000-0000-000000000000"


def fake_gpu_machine(root: Path) -> dict[str, str]:
    """The environment that runs a build script against the fake tools under ``root``."""
    bin_dir, py_dir = root / "bin", root / "py" / "tensorrt"
    bin_dir.mkdir(parents=True)
    py_dir.mkdir(parents=True)
    for name, text in (("trtexec", FAKE_TRTEXEC), ("polygraphy", FAKE_POLYGRAPHY),
                       ("nvidia-smi", FAKE_NVIDIA_SMI)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (py_dir / "__init__.py").write_text(f"__version__ = {FAKE_TRT_VERSION!r}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TRT_MAJOR", "PYTHON")}
    return env | {
        "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}", "PYTHON": sys.executable,
        "PYTHONPATH": f"{root / 'py'}{os.pathsep}{ROOT}", "CUDA_VISIBLE_DEVICES": HIDDEN_GPU,
        "FAKE_LOG": str(root / "trtexec.log"), "FAKE_SMI_LOG": str(root / "nvidia-smi.log"),
    }


def tool_calls(env: dict[str, str]) -> list[list[str]]:
    """Each run of the fake trtexec or polygraphy: the tool's name, then its arguments."""
    log = Path(env["FAKE_LOG"])
    words = log.read_text().split("\0")[:-1] if log.exists() else []
    calls: list[list[str]] = []
    for word in words:
        calls.append([]) if word == "CALL" else calls[-1].append(word)
    return calls


def run_script(script: Path, *args: str, env: dict[str, str], cwd: Path,
               shell: tuple[str, ...] = ("bash",)) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([*shell, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def hand_off(onnx_file: Path, folder: Path, *, engine_name: str = "m.engine", precision: str = "fp32",
             batch: str = "1:8:32") -> Path:
    """What m2pt-export leaves where TensorRT is missing: the ONNX and its build script in one folder."""
    folder.mkdir(parents=True)
    onnx_copy = folder / onnx_file.name
    shutil.copy(onnx_file, onnx_copy)
    with pytest.raises(M2ptError, match="TensorRT is not installed"):
        build_engine_from_onnx(onnx_copy, folder / engine_name, precision=precision,  # type: ignore[arg-type]
                               batch=parse_batch(batch), platform=NO_TRT)
    return folder


def test_build_script_runs_from_anywhere_after_its_folder_is_copied(onnx_file, tmp_path) -> None:
    export = hand_off(onnx_file, tmp_path / "export")
    assert os.access(commands_path(export / "m.engine"), os.X_OK)
    copied = tmp_path / "gpu machine" / "the export"
    shutil.copytree(export, copied)
    shutil.rmtree(export)  # nothing may still point at the folder the export ran in
    env = fake_gpu_machine(tmp_path / "tools")
    out = run_script(copied / "m.engine.build.sh", env=env, cwd=tmp_path / "somewhere else", shell=())
    assert out.returncode == 0, out.stderr
    engine = copied / "m.engine"
    assert engine.read_bytes() == b"fake TensorRT plan\n"
    assert sorted(p.name for p in copied.iterdir()) == ["m.engine", "m.engine.build.sh", "m.engine.json",
                                                        "tiny.fp32.onnx"]
    (call,) = tool_calls(env)
    here = copied.resolve()
    assert call[:3] == ["trtexec", f"--onnx={here / 'tiny.fp32.onnx'}",
                        f"--saveEngine={here / '.m.engine.partial'}"]
    assert "--stronglyTyped" in call and "--maxShapes=pixel_values:32x3x32x32" in call
    info = read_engine_info(engine)  # the hash check passes: the sidecar describes this engine
    assert (info.tensorrt_version, info.api_path, info.precision) == (FAKE_TRT_VERSION, "strong-typing", "fp32")
    assert (info.gpu_name, info.compute_capability) == ("NVIDIA H100 80GB HBM3", (9, 0))
    assert info.profile == PROFILE and info.onnx_sha256 == sha256_file(copied / "tiny.fp32.onnx")
    assert info.model == read_metadata(onnx.load_model(copied / "tiny.fp32.onnx")) != {}
    smi_args = Path(env["FAKE_SMI_LOG"]).read_text().split("\0")[:-1]
    assert smi_args == ["--query-gpu=name,compute_cap", "--format=csv,noheader", "-i", HIDDEN_GPU]


def test_build_script_takes_either_tool_tensorrt_10_flags_and_odd_names(onnx_file, tmp_path) -> None:
    name = "it's a $HOME\nengine.engine"
    export = hand_off(onnx_file, tmp_path / "my export; rm -rf x", engine_name=name, precision="fp16")
    env = fake_gpu_machine(tmp_path / "tools") | {"TRT_MAJOR": "10"}
    partial = str(export.resolve() / ("." + name + ".partial"))
    for tool in ("trtexec", "polygraphy"):
        out = run_script(commands_path(export / name), tool, env=env, cwd=tmp_path / "elsewhere", shell=("sh",))
        assert out.returncode == 0, out.stderr
        info = read_engine_info(export / name)
        # builder flags lower the fp32 ONNX to fp16: the sidecar records the engine's precision
        assert (info.api_path, info.precision) == ("builder-flags", "fp16")
    trtexec, polygraphy = tool_calls(env)
    assert f"--saveEngine={partial}" in trtexec and "--fp16" in trtexec and "--stronglyTyped" not in trtexec
    assert polygraphy[:7] == ["polygraphy", "convert", str(export.resolve() / "tiny.fp32.onnx"), "--convert-to",
                              "trt", "-o", partial]
    assert polygraphy[-1] == "--fp16" and "pixel_values:[32,3,32,32]" in polygraphy


def test_build_script_refuses_a_missing_tool_or_onnx_leaving_nothing(onnx_file, tmp_path) -> None:
    export = hand_off(onnx_file, tmp_path / "export")
    script, env = export / "m.engine.build.sh", fake_gpu_machine(tmp_path / "tools")
    if shutil.which("trtexec") is not None:
        pytest.skip(reason="trtexec is installed here; this case needs it missing")
    out = run_script(script, env=env | {"PATH": os.environ["PATH"]}, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.splitlines() == [
        "m.engine.build.sh: trtexec is not on PATH; install TensorRT (trtexec is in its bin folder) or "
        "Polygraphy, or name the other tool"]
    out = run_script(script, "tensorrt", env=env, cwd=tmp_path)
    assert out.returncode == 2 and "unknown tool tensorrt; usage: bash" in out.stderr
    (export / "tiny.fp32.onnx").unlink()
    out = run_script(script, env=env, cwd=tmp_path)
    assert out.returncode == 2 and "tiny.fp32.onnx is missing; copy the whole folder" in out.stderr
    assert sorted(p.name for p in export.iterdir()) == ["m.engine.build.sh"] and tool_calls(env) == []


def test_a_failed_rebuild_keeps_the_engine_and_sidecar_it_had(onnx_file, tmp_path) -> None:
    export = hand_off(onnx_file, tmp_path / "export")
    env = fake_gpu_machine(tmp_path / "tools")
    assert run_script(export / "m.engine.build.sh", env=env, cwd=tmp_path).returncode == 0
    before = {p.name: p.read_bytes() for p in export.iterdir()}
    out = run_script(export / "m.engine.build.sh", env=env | {"FAKE_FAIL": "1"}, cwd=tmp_path)
    assert out.returncode == 1 and "fake trtexec: build failed" in out.stderr
    assert {p.name: p.read_bytes() for p in export.iterdir()} == before  # no partial engine left


def test_without_m2pt_deploy_the_engine_is_built_and_the_sidecar_step_named(onnx_file, tmp_path) -> None:
    export = hand_off(onnx_file, tmp_path / "export")
    script, env = export / "m.engine.build.sh", fake_gpu_machine(tmp_path / "tools")
    out = run_script(script, env=env | {"PYTHON": "no-such-python"}, cwd=tmp_path)
    assert out.returncode == 2 and (export / "m.engine").is_file() and not sidecar_path(export / "m.engine").exists()
    assert out.stderr.splitlines()[-1].endswith(
        "has no sidecar: no-such-python cannot import m2pt_deploy; install m2pt-deploy (or set PYTHON), then "
        f"run: bash {script} sidecar")
    if importlib.util.find_spec("tensorrt") is None:  # else the real module would answer
        no_trt = env | {"PYTHONPATH": str(ROOT)}  # m2pt_deploy, but not TensorRT's Python module
        out = run_script(script, "sidecar", env=no_trt, cwd=tmp_path)
        assert out.returncode == 2
        assert "cannot record the engine's TensorRT version: TensorRT is not installed" in out.stderr
        assert out.stderr.splitlines()[-1].endswith(
            f"has no sidecar (see above); once that is fixed, run: bash {script} sidecar")
    out = run_script(script, "sidecar", env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert read_engine_info(export / "m.engine").tensorrt_version == FAKE_TRT_VERSION
    assert len(tool_calls(env)) == 1  # `sidecar` did not build again


H100_HERE = Platform("11.4.0.106", "NVIDIA H100 80GB HBM3", (9, 0))


def test_write_sidecar_describes_an_engine_built_elsewhere(onnx_file, tmp_path) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\x00plan")
    out = write_sidecar(onnx_file, engine, batch=parse_batch("1:8:32"), api_path="strong-typing",
                        platform=H100_HERE)
    info = read_engine_info(engine)
    assert out == sidecar_path(engine) and info.precision == "fp32" and info.profile == PROFILE
    assert info.tensorrt_version == "11.4.0.106" and info.engine_sha256 == sha256_file(engine)
    with pytest.raises(M2ptError, match="m.engine.json: output exists; pass --force"):
        write_sidecar(onnx_file, engine, batch=parse_batch("1:8:32"), api_path="strong-typing", platform=H100_HERE)


@pytest.mark.parametrize("kwargs, message", [
    ({"precision": "int8"}, "--precision int8, but the ONNX is fp32 (m2pt_deploy.precision) and a strongly "
                            "typed engine computes in the ONNX's types"),
    ({"platform": NO_TRT}, "cannot record the engine's TensorRT version: TensorRT is not installed"),
    ({"platform": Platform("11.4.0", None, None)}, "cannot record the engine's GPU: torch sees no CUDA device"),
    ({"api_path": "weak"}, "api path 'weak': choose one of strong-typing, builder-flags"),
])
def test_write_sidecar_refuses_what_it_cannot_record(onnx_file, tmp_path, kwargs, message) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\x00plan")
    args = {"batch": BatchSpec(1, 8, 32), "api_path": "strong-typing", "platform": H100_HERE, **kwargs}
    with pytest.raises(M2ptError) as err:
        write_sidecar(onnx_file, engine, **args)
    assert message in str(err.value) and not sidecar_path(engine).exists()


def test_sidecar_entry_point_errors_are_one_line(onnx_file, tmp_path, capsys) -> None:
    code = main(["sidecar", str(onnx_file), "--onnx", str(onnx_file), "--batch", "1:8:32",
                 "--api-path", "strong-typing"])
    assert code == 2
    assert capsys.readouterr().err == (f"error: {onnx_file}: is an ONNX model, not a TensorRT engine; build one "
                                       "with m2pt-export --format trt\n")
    assert list(tmp_path.iterdir()) == [onnx_file]


def _has_tensorrt() -> bool:
    from m2pt_deploy.export.tensorrt import detect_platform

    return detect_platform().missing() is None


@pytest.mark.trt
@pytest.mark.skipif(not _has_tensorrt(), reason="needs TensorRT and a CUDA GPU; neither is installable here")
def test_real_build_writes_a_plain_plan_and_sidecar(onnx_file, tmp_path) -> None:
    engine = build_engine_from_onnx(onnx_file, tmp_path / "m.engine", precision="fp32", batch=BatchSpec(1, 2, 4))
    info = read_engine_info(engine)
    assert info.engine_sha256 == sha256_file(engine) and info.profile.max_batch == 4
    import tensorrt as trt

    assert trt.Runtime(trt.Logger()).deserialize_cuda_engine(engine.read_bytes()) is not None


class _FakeTensorRT:
    """Just enough of TensorRT's module surface to run our callbacks (not TensorRT itself)."""

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    class MemoryPoolType:
        WORKSPACE = "workspace"


class _FakeConfig:
    def __init__(self) -> None:
        self.pools: dict[str, int] = {}
        self.progress_monitor = None

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.pools[pool] = size


def test_config_extras_set_workspace_and_a_progress_monitor(monkeypatch) -> None:
    from m2pt_deploy.export.tensorrt import _ConfigExtras

    monkeypatch.setitem(sys.modules, "tensorrt", _FakeTensorRT)
    lines: list[str] = []
    extras, config = _ConfigExtras(3 * 2**30, lines.append), _FakeConfig()
    extras(None, None, config)  # type: ignore[arg-type]
    assert config.pools == {"workspace": 3 * 2**30}
    monitor = config.progress_monitor
    assert monitor is extras.monitor and isinstance(monitor, _FakeTensorRT.IProgressMonitor)
    # The order TensorRT reports a build in: a top-level phase with a nested one.
    monitor.phase_start("Building engine", None, 2)
    monitor.phase_start("Tactic search", "Building engine", 40)
    assert monitor.step_complete("Tactic search", 0) is True
    monitor.phase_finish("Tactic search")
    monitor.step_complete("Building engine", 0)
    monitor.step_complete("Building engine", 1)
    monitor.phase_finish("Building engine")
    monitor.phase_start("Optimizing", None, 100)
    for step in range(100):
        monitor.step_complete("Optimizing", step)
    assert lines[:3] == ["[TensorRT] Building engine (2 steps)", "[TensorRT] Building engine: 1/2",
                         "[TensorRT] Building engine: 2/2"]
    assert lines[3:] == ["[TensorRT] Optimizing (100 steps)"] + [f"[TensorRT] Optimizing: {k}/100"
                                                                  for k in range(10, 101, 10)]
