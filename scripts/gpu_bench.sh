#!/usr/bin/env bash
# One GPU session's worth of figures: what the GPU and its host CPU are, the gpu-marked tests,
# then `m2pt-bench --device cuda` on ViT-B/16 (batches 1 8 64, fp32 / fp16 / bf16, eager and
# torch.compile). Everything lands in $OUT: log, bench-cuda.json, bench-cuda.md (the bench
# rewrites its JSON and Markdown after every cell, so a run stopped by the timeout keeps what
# it measured). Run from the repository root; the package need not be installed:
#
#   OUT=/tmp/gpu-bench scripts/gpu_bench.sh [BENCH_TIMEOUT_S] [extra m2pt-bench args...]
#
# If .whl/ holds wheels (declared dependencies a bare GPU image lacks, e.g. polygraphy and
# onnx-graphsurgeon), they are installed into /tmp/site first.
set -uo pipefail
: "${OUT:?set OUT to the folder for the results}"
bench_timeout=${1:-330}
shift || true
export PYTHONUNBUFFERED=1 PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl/*.whl failed" >&2; exit 1; }
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
mkdir -p "$OUT"
{
  echo "== $(date -u +%FT%TZ) nvidia-smi"
  nvidia-smi
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv
  echo "== host CPU"
  lscpu
  grep -m1 '^flags' /proc/cpuinfo
  echo "== python"
  python3 -c 'import sys, torch, timm; print(sys.version.split()[0], "torch", torch.__version__, "CUDA", torch.version.cuda, "timm", timm.__version__, torch.cuda.get_device_name())'
  echo "== gpu-marked tests"
  timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/bench
  echo "pytest exit: $?"
  echo "== $(date -u +%FT%TZ) m2pt-bench --device cuda (timeout ${bench_timeout}s)"
  timeout "$bench_timeout" python3 -m m2pt_deploy.cli.bench --device cuda --arch vit_base_patch16_224 \
    --batches 1 8 64 --out "$OUT" "$@"
  echo "m2pt-bench exit: $? ($(date -u +%FT%TZ))"
} 2>&1 | tee "$OUT/log"
