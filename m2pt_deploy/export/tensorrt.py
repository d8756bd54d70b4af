"""Verified ONNX → TensorRT engine, through Polygraphy's lazy loaders.

``engine_chain`` assembles ``NetworkFromOnnxPath → CreateConfig → EngineFromNetwork →
SaveEngine`` without touching TensorRT (Polygraphy imports it when a loader is called),
so everything up to the build call is exercised on machines without TensorRT or a GPU.
Where either is missing, ``build_engine_from_onnx`` still leaves the verified ONNX and
``<engine>.build.sh``: copied with its folder to a machine that has both, it builds the same
engine with ``trtexec`` or ``polygraphy convert``, then its sidecar
(``python -m m2pt_deploy engine-info sidecar``), so that ``m2pt-verify --engine`` accepts it.

Two API paths, chosen by the TensorRT major version:

- ``strong-typing`` (TensorRT 11, where weak typing is gone): the network is strongly
  typed, so the engine computes in the types the ONNX spells out (mixed precision or Q/DQ);
- ``builder-flags`` (TensorRT 10): the same ONNX, with the precision's builder flag
  (``FP16``, ``BF16``, ``INT8``, ``FP8``) set and precision constraints preferred.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from m2pt_deploy.errors import M2ptError, first_line
from m2pt_deploy.export.engine_info import (
    ApiPath,
    Platform,
    TrtPrecision,
    describe_engine,
    detect_platform,
    write_engine_info,
)
from m2pt_deploy.export.onnx import BatchSpec
from m2pt_deploy.export.profiles import ShapeProfile, profile_for
from m2pt_deploy.fileio import atomic_output, check_output_path
from m2pt_deploy.vocabulary import check_build_options

if TYPE_CHECKING:
    import tensorrt as trt

__all__ = [
    "ApiPath",
    "BuildOptions",
    "EngineChain",
    "Platform",
    "TrtPrecision",
    "api_path_for",
    "build_commands",
    "build_engine_from_onnx",
    "check_build_options",
    "check_precision_supported",
    "commands_path",
    "detect_platform",
    "engine_chain",
]

# The oldest GPU architecture with fast kernels for each precision.
_MIN_COMPUTE = {"fp32": (5, 0), "fp16": (5, 3), "bf16": (8, 0), "int8": (6, 1), "fp8": (8, 9)}
_ARCH_HINT = {"bf16": "Ampere", "int8": "Pascal", "fp8": "Ada or Hopper", "fp16": "Maxwell"}


def api_path_for(tensorrt_version: str) -> ApiPath:
    try:
        major = int(tensorrt_version.split(".")[0])
    except ValueError:
        raise M2ptError(f"cannot read TensorRT version {tensorrt_version!r}") from None
    if major >= 11:
        return "strong-typing"
    if major == 10:
        return "builder-flags"
    raise M2ptError(f"TensorRT {tensorrt_version} is too old; m2pt-deploy builds with TensorRT 10 or 11")


def check_precision_supported(precision: str, platform: Platform) -> None:
    """Refuse a precision the GPU has no kernels for (fp8 before Ada/Hopper, bf16 before Ampere)."""
    cc = platform.compute_capability
    need = _MIN_COMPUTE[precision]
    if cc is not None and tuple(cc) < need:
        raise M2ptError(
            f"--precision {precision} needs compute capability {need[0]}.{need[1]} or newer "
            f"({_ARCH_HINT[precision]}); {platform.gpu_name} is {cc[0]}.{cc[1]}")


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    precision: TrtPrecision
    profile: ShapeProfile
    workspace_gb: float | None = None
    timing_cache: Path | None = None
    opt_level: int | None = None

    def __post_init__(self) -> None:
        check_build_options(self.precision, self.workspace_gb, self.timing_cache, self.opt_level)

    @property
    def workspace_bytes(self) -> int | None:
        return None if self.workspace_gb is None else int(self.workspace_gb * 2**30)


@dataclasses.dataclass(frozen=True)
class EngineChain:
    """The Polygraphy loaders of one build; calling ``save`` runs the whole chain."""

    network: Any
    config: Any
    engine: Any
    save: Any
    api_path: ApiPath


class _ConfigExtras:
    """Builder-config settings that need TensorRT's own enums and classes, applied lazily."""

    def __init__(self, workspace_bytes: int | None, progress: Callable[[str], None] | None) -> None:
        self.workspace_bytes = workspace_bytes
        self.progress = progress
        self.monitor: Any = None  # kept alive: TensorRT holds only a borrowed pointer

    def __call__(self, builder: trt.Builder, network: trt.INetworkDefinition,
                 config: trt.IBuilderConfig) -> None:
        import tensorrt as trt

        if self.workspace_bytes is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        if self.progress is not None:
            self.monitor = make_progress_monitor(self.progress)
            config.progress_monitor = self.monitor


def make_progress_monitor(write: Callable[[str], None]) -> trt.IProgressMonitor:
    """A ``trt.IProgressMonitor`` that reports each top-level build phase as it advances."""
    import tensorrt as trt

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}
            self.parents: dict[str, str | None] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.steps[phase_name], self.parents[phase_name] = num_steps, parent_phase
            if parent_phase is None:
                write(f"[TensorRT] {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            total = self.steps.get(phase_name, 0)
            # About ten lines per phase, however many steps it has.
            if self.parents.get(phase_name) is None and (step + 1) % max(1, total // 10) == 0:
                write(f"[TensorRT] {phase_name}: {step + 1}/{total}")
            return True

        def phase_finish(self, phase_name: str) -> None:
            self.steps.pop(phase_name, None)

    return _Monitor()


def engine_chain(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    options: BuildOptions,
    *,
    api_path: ApiPath,
    progress: Callable[[str], None] | None = None,
) -> EngineChain:
    """Assemble the loaders; nothing here imports TensorRT."""
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineFromNetwork,
        NetworkFromOnnxPath,
        PostprocessConfig,
        SaveEngine,
    )

    flags = options.precision if api_path == "builder-flags" else "fp32"
    cache = None if options.timing_cache is None else str(options.timing_cache)
    network = NetworkFromOnnxPath(os.fspath(onnx_path), strongly_typed=api_path == "strong-typing")
    config = CreateConfig(
        profiles=[options.profile.to_polygraphy()],
        fp16=flags == "fp16", bf16=flags == "bf16", int8=flags == "int8", fp8=flags == "fp8",
        precision_constraints="prefer" if flags != "fp32" else None,
        load_timing_cache=cache if cache and Path(cache).is_file() else None,
        builder_optimization_level=options.opt_level,
    )
    config = PostprocessConfig(config, _ConfigExtras(options.workspace_bytes, progress))
    engine = EngineFromNetwork(network, config, save_timing_cache=cache)
    return EngineChain(network, config, engine, SaveEngine(engine, os.fspath(engine_path)), api_path)


def commands_path(engine_path: str | os.PathLike[str]) -> Path:
    path = Path(engine_path)
    return path.with_name(path.name + ".build.sh")


def _shell_path(path: str | os.PathLike[str], folder: Path) -> str:
    """A shell word for ``path``: relative to the script's folder (``"$HERE"/...``) when it lies
    inside it, so the folder can be copied to another machine; absolute otherwise."""
    resolved = Path(path).resolve()
    try:
        return '"$HERE"/' + shlex.quote(resolved.relative_to(folder.resolve()).as_posix())
    except ValueError:
        return shlex.quote(str(resolved))


def build_commands(onnx_path: str | os.PathLike[str], engine_path: str | os.PathLike[str],
                   options: BuildOptions) -> str:
    """``<engine>.build.sh``: trtexec or polygraphy lines for both API paths, then the sidecar.

    Runs from any working directory, also after its folder is copied elsewhere: every path
    is resolved against the script's own folder.
    """
    engine = Path(engine_path)
    folder = engine.parent
    precision, profile = options.precision, options.profile
    common_trt = ['--onnx="$ONNX"', '--saveEngine="$PARTIAL"', *profile.trtexec_args()]
    common_pg = ["polygraphy", "convert", '"$ONNX"', "--convert-to", "trt", "-o", '"$PARTIAL"',
                 *profile.polygraphy_args()]
    if options.workspace_bytes is not None:
        mib = options.workspace_bytes // 2**20
        common_trt.append(f"--memPoolSize=workspace:{mib}M")
        common_pg += ["--pool-limit", f"workspace:{mib}M"]
    if options.timing_cache is not None:
        cache = _shell_path(options.timing_cache, folder)
        common_trt.append(f"--timingCacheFile={cache}")
        common_pg += ["--load-timing-cache", cache, "--save-timing-cache", cache]
    if options.opt_level is not None:
        common_trt.append(f"--builderOptimizationLevel={options.opt_level}")
        common_pg += ["--builder-optimization-level", str(options.opt_level)]
    flag10 = [] if precision == "fp32" else [f"--{precision}"]
    batch = f"{profile.min[0]}:{profile.opt[0]}:{profile.max[0]}"
    name = shlex.quote(engine.name)
    lines = [
        "#!/usr/bin/env bash",
        # No file names in comments: a name may hold a newline.
        f"# Builds ENGINE ({precision}, batch {batch}) from the verified ONNX, then ENGINE.json, the",
        "# sidecar m2pt-verify --engine checks. Copy this whole folder to a machine with TensorRT",
        "# and a GPU and run it from any directory (paths are relative to this script):",
        "#   bash THIS_FILE [trtexec|polygraphy|sidecar]   (TRT_MAJOR=10: TensorRT 10's builder flags)",
        "# 'sidecar' only writes the sidecar of an engine this script built on this machine.",
        "# TensorRT 11 networks are strongly typed: the precision is the one written in the ONNX.",
        "# The sidecar records this machine's TensorRT and GPU; it needs ${PYTHON:-python3} with",
        "# m2pt-deploy and TensorRT's Python module.",
        'if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi',
        "set -euo pipefail",
        'HERE="$(CDPATH= cd -- "$(dirname -- "$0")" && pwd -P)"',
        f"ONNX={_shell_path(onnx_path, folder)}",
        f'ENGINE="$HERE"/{name}',
        f'PARTIAL="$HERE"/{shlex.quote("." + engine.name + ".partial")}',
        'PYTHON="${PYTHON:-python3}"',
        'TOOL="${1:-trtexec}"',
        'if [ "${TRT_MAJOR:-11}" = 10 ]; then API=builder-flags; else API=strong-typing; fi',
        'fail() { echo "$(basename "$0"): $*" >&2; exit 2; }',
        'case "$TOOL" in',
        "  sidecar|trtexec|polygraphy) ;;",
        '  *) fail "unknown tool $TOOL; usage: bash $0 [trtexec|polygraphy|sidecar]" ;;',
        "esac",
        '[ -f "$ONNX" ] || fail "the ONNX $ONNX is missing; copy the whole folder the export wrote"',
        '[ "$TOOL" = sidecar ] || command -v "$TOOL" >/dev/null 2>&1 || fail "$TOOL is not on PATH;'
        ' install TensorRT (trtexec is in its bin folder) or Polygraphy, or name the other tool"',
        "trap 'rm -f \"$PARTIAL\"' EXIT  # a failed build leaves no partial engine",
        'case "$TOOL${TRT_MAJOR:-11}" in',
        "  sidecar*) ;;",
        "  trtexec10) " + " ".join(["trtexec", *common_trt, *flag10]) + " ;;",
        "  polygraphy10) " + " ".join([*common_pg, *flag10]) + " ;;",
        "  trtexec*) " + " ".join(["trtexec", *common_trt, "--stronglyTyped"]) + " ;;",
        "  polygraphy*) " + " ".join([*common_pg, "--strongly-typed"]) + " ;;",
        "esac",
        'if [ "$TOOL" != sidecar ]; then',
        '  rm -f "$ENGINE.json"  # it describes the engine being replaced',
        '  mv -f "$PARTIAL" "$ENGINE"',
        '  echo "built $ENGINE"',
        "fi",
        '[ -f "$ENGINE" ] || fail "no engine $ENGINE to describe; build it first: bash $0 trtexec"',
        '"$PYTHON" -c "import m2pt_deploy" >/dev/null 2>&1 || fail "$ENGINE has no sidecar:'
        ' $PYTHON cannot import m2pt_deploy; install m2pt-deploy (or set PYTHON), then run: bash $0 sidecar"',
        '"$PYTHON" -m m2pt_deploy engine-info sidecar "$ENGINE" --onnx "$ONNX" '
        f'--batch {batch} --precision {precision} --api-path "$API" --force ||',
        '  fail "$ENGINE has no sidecar (see above); once that is fixed, run: bash $0 sidecar"',
    ]
    return "\n".join(lines) + "\n"


def build_engine_from_onnx(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    *,
    precision: TrtPrecision,
    batch: BatchSpec,
    workspace_gb: float | None = None,
    timing_cache: str | os.PathLike[str] | None = None,
    opt_level: int | None = None,
    force: bool = False,
    platform: Platform | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Build and serialize the engine, then its sidecar; return the engine's path.

    Always writes ``<engine>.build.sh`` first. Without TensorRT or a GPU, raises
    :class:`M2ptError` with one line naming what is missing and where the ONNX and the
    script are.

    Args:
        onnx_path: the verified ONNX, already at ``precision`` (mixed precision or Q/DQ).
        precision: what the ONNX encodes; on TensorRT 10 it also picks the builder flag.
        batch: the optimization profile's batch range.
    """
    onnx_file = Path(onnx_path)
    if not onnx_file.is_file():
        raise M2ptError("ONNX file not found", onnx_file)
    proto = onnx.load_model(onnx_file, load_external_data=False)
    options = BuildOptions(precision, profile_for(proto, batch), workspace_gb,
                           None if timing_cache is None else Path(timing_cache), opt_level)
    out = check_output_path(engine_path, force=force)
    script = commands_path(out)
    with atomic_output(script, force=True) as tmp:
        tmp.write_text(build_commands(onnx_file, out, options))
    mode = script.stat().st_mode
    script.chmod(mode | (mode & 0o444) >> 2)  # executable by whoever may read it
    platform = platform or detect_platform()
    missing = platform.missing()
    if missing is not None:
        raise M2ptError(f"{missing}; the verified ONNX is {onnx_file} and {script} builds this engine "
                        "and its sidecar where TensorRT and a GPU are: copy the folder there and run "
                        f"bash {script.name}")
    assert platform.tensorrt_version and platform.gpu_name and platform.compute_capability
    api = api_path_for(platform.tensorrt_version)
    check_precision_supported(precision, platform)
    report = progress or _stderr
    report(f"building {out.name}: TensorRT {platform.tensorrt_version} ({api}), {precision}, "
           f"batch {batch}, on {platform.gpu_name}")
    from polygraphy.exception import PolygraphyException

    with atomic_output(out, force=force) as tmp:
        try:
            engine_chain(onnx_file, tmp, options, api_path=api, progress=report).save()
        except PolygraphyException as e:
            raise M2ptError(f"TensorRT could not build the engine: {first_line(e)}",
                            onnx_file) from e
    write_engine_info(out, describe_engine(onnx_file, proto, out, options.profile, precision, api, platform),
                      force=True)
    return out


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
