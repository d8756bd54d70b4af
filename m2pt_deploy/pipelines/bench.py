"""``bench_cpu`` and ``bench_cuda``: what ``m2pt-bench`` runs, as library functions. They pick the
subject (random weights, a checkpoint, or an ONNX file), run every runtime side by side, add the
digits int8 accuracy to a random-weight run, and write the report files."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.request import BenchRequest

__all__ = ["DEFAULT_ARCH", "bench", "bench_cpu", "bench_cuda"]

DEFAULT_ARCH = "vit_base_patch16_224"
Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(f"m2pt-bench: {line}", file=sys.stderr, flush=True)


def _is_onnx(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def _subject(model: str, model_options: Mapping[str, Any], *, data: str | None, eval_images: int, seed: int,
             log: Log) -> tuple[Any, Any]:
    """The model to measure and the labelled images to score it on, every input checked."""
    from m2pt_deploy.bench.accuracy import load_eval_data
    from m2pt_deploy.bench.subject import checkpoint_subject, onnx_subject, read_onnx_file
    from m2pt_deploy.pipelines.export import load_for_export

    input_size = model_options.get("input_size")
    if _is_onnx(model):
        info, spec = read_onnx_file(model, input_size=input_size)
        eval_data = load_eval_data(data, spec, images=eval_images, seed=seed) if data else None
        return onnx_subject(info, spec), eval_data
    ckpt = load_for_export(model, model_options)
    eval_data = load_eval_data(data, ckpt.spec, images=eval_images, seed=seed) if data else None
    log(f"building {model}'s models and merging")
    return checkpoint_subject(ckpt, seed=seed, overrides=_export_flags(model_options)), eval_data


def _export_flags(model_options: Mapping[str, Any]) -> tuple[str, ...]:
    """The ``m2pt-export`` flags that load the checkpoint as it was loaded here (for the cost rows)."""
    out: list[str] = []
    for key in ("family", "arch"):
        if model_options.get(key):
            out += [f"--{key}", str(model_options[key])]
    if model_options.get("input_size"):
        out += ["--input-size", *map(str, model_options["input_size"])]
    for name, value in (model_options.get("options") or {}).items():
        out += [f"--{name.replace('_', '-')}", str(value)]
    return (*out, *(["--ema"] if model_options.get("ema") else []))


def bench(request: BenchRequest, *, export_command: Sequence[str] = (),
          log: Log = _stderr) -> tuple[dict[str, Any], tuple[Path, ...]]:
    """Run one benchmark request (``m2pt-bench``), validated in full first: :func:`bench_cpu` or
    :func:`bench_cuda` with the request's settings and the defaults its help states."""
    r = request.validate()
    if r.device == "cuda":
        return bench_cuda(r.out, arch=r.settings.arch, model_kwargs=r.model_kwargs, batches=r.batches,
                          model_options=r.settings.load_kwargs(),
                          dtypes=r.dtypes, rounds=r.rounds, warmup=r.warmup, seed=r.seed, compile=r.compile,
                          log=log)
    return bench_cpu(
        r.out, r.model, model_options=r.settings.load_kwargs(), arch=r.settings.arch, model_kwargs=r.model_kwargs,
        data=r.data, eval_images=256 if r.eval_images is None else r.eval_images, batches=r.batches,
        rounds=r.rounds or 10, warmup=2 if r.warmup is None else r.warmup, seed=r.seed, compile=r.compile,
        int8=r.int8, export_cost=r.export_cost, export_command=export_command,
        calib_images=r.calib_images or 64, accuracy_epochs=20 if r.accuracy_epochs is None else r.accuracy_epochs,
        log=log)


def bench_cpu(
    out: str | os.PathLike[str],
    model: str | None = None,
    *,
    model_options: Mapping[str, Any] | None = None,
    arch: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    data: str | None = None,
    eval_images: int = 0,
    batches: Sequence[int] | None = None,
    rounds: int = 10,
    warmup: int = 2,
    seed: int = 0,
    compile: bool = True,
    int8: bool = True,
    export_cost: bool = True,
    export_command: Sequence[str] = (),
    calib_images: int = 64,
    accuracy_epochs: int = 20,
    log: Log = _stderr,
) -> tuple[dict[str, Any], tuple[Path, ...]]:
    """Every CPU runtime × model in one interleaved run; returns the report data and the files
    written under ``out`` (JSON, Markdown, chart). Without ``model``: random weights of ``arch``
    (with ``model_kwargs``), or of ``model_options["family"]`` at the paper's size (see
    :mod:`m2pt_deploy.bench.paper`) and, unless ``accuracy_epochs`` is 0, fp32 vs int8 accuracy of a
    trained model of the family (the digits ViT, or the shipped small model). ``export_command`` runs
    ``m2pt-export`` for its cost rows (empty: none)."""
    from m2pt_deploy.bench.cpu import BenchOptions, run_benchmark
    from m2pt_deploy.bench.cpu_report import write_report
    if export_cost and not export_command:
        raise M2ptError("export_cost needs export_command, the command line that runs m2pt-export "
                        "(the installed m2pt-export, for one); or pass export_cost=False")
    subject: Any
    eval_data, fixed = None, None
    if model is None:
        subject = _random_spec(arch, model_kwargs, model_options)
    else:
        subject, eval_data = _subject(model, model_options or {}, data=data, eval_images=eval_images,
                                      seed=seed, log=log)
        fixed = subject.onnx.batch if subject.onnx is not None else None
    options = BenchOptions(
        batches=tuple(batches or ((fixed,) if fixed else (1, 8))), rounds=rounds, warmup=warmup, seed=seed,
        compile=compile, int8=int8, export_cost=export_cost, export_command=tuple(export_command),
        calib_images=calib_images)
    result = run_benchmark(subject, options, eval_data=eval_data, log=log)
    result["accuracy"] = _trained_accuracy(subject, accuracy_epochs, seed, log) \
        if model is None and accuracy_epochs and int8 else None
    return result, tuple(write_report(result, Path(out)))


def _random_spec(arch: str | None, model_kwargs: Mapping[str, Any] | None,
                 model_options: Mapping[str, Any] | None) -> Any:
    from m2pt_deploy.bench.paper import random_spec

    o = model_options or {}
    return random_spec(o.get("family"), arch=arch, model_kwargs=model_kwargs,
                       input_size=tuple(o["input_size"]) if o.get("input_size") else None, options=o.get("options"))


def _trained_accuracy(spec: Any, epochs: int, seed: int, log: Log) -> dict[str, Any] | None:
    """What int8 costs in accuracy for the benchmarked family, on a trained model of it: the digits
    ViT (trained now, ``epochs``) for RGB image models, the shipped small model for clips, clouds
    and spectrograms; None for a family with neither (a random model has no accuracy to lose)."""
    from m2pt_deploy.families import family_of
    from m2pt_deploy.inputs.calibration import photo_calibrated
    from m2pt_deploy.pipelines.int8_accuracy import digits_int8_accuracy, small_model_int8_accuracy
    from m2pt_deploy.pipelines.small_models import SMALL_MODELS

    modality = family_of(spec).input_metadata(spec)["modality"]
    with tempfile.TemporaryDirectory(prefix="m2pt-bench-accuracy-") as tmp:
        if modality in SMALL_MODELS:
            log(f"the shipped small {modality} model: fp32 vs int8 accuracy on fresh inputs of its task")
            return small_model_int8_accuracy(modality, Path(tmp))
        if photo_calibrated(spec):
            log(f"training the digits ViT for {epochs} epochs: fp32 vs int8 accuracy on its held-out split")
            return digits_int8_accuracy(Path(tmp), epochs=epochs, seed=seed)
    return None


def bench_cuda(
    out: str | os.PathLike[str],
    *,
    arch: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    model_options: Mapping[str, Any] | None = None,
    batches: Sequence[int] | None = None,
    dtypes: Sequence[str] | None = None,
    rounds: int | None = None,
    warmup: int | None = None,
    seed: int = 0,
    compile: bool = True,
    log: Log = _stderr,
) -> tuple[dict[str, Any], tuple[Path, ...]]:
    """Random-weight vanilla / merged / unmerged models on the CUDA device, per dtype and batch;
    the report is rewritten under ``out`` after every cell (a long run leaves partial figures)."""
    from m2pt_deploy.bench.cuda import CudaBenchOptions, check_cuda, run_cuda_benchmark
    from m2pt_deploy.bench.cuda_report import write_report
    try:
        check_cuda()
    except M2ptError as e:
        raise M2ptError(f"--device cuda: {e}") from None
    defaults = CudaBenchOptions()
    options = CudaBenchOptions(
        batches=tuple(batches or defaults.batches), dtypes=tuple(dict.fromkeys(dtypes or defaults.dtypes)),  # type: ignore[arg-type]
        rounds=rounds or defaults.rounds, warmup=defaults.warmup if warmup is None else warmup,
        seed=seed, compile=compile)
    options.check()
    spec = _random_spec(arch, model_kwargs, model_options)
    result = run_cuda_benchmark(spec, options, log=log, on_cell=lambda partial: write_report(partial, Path(out)))
    return result, tuple(write_report(result, Path(out)))
