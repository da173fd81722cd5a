#!/usr/bin/env bash
# GPU check: what torchship's GPU paths do on this machine, as a Markdown report.
#
#   scripts/gpu_check.sh [OUT_DIR]          (default OUT_DIR: gpu-check; PYTHON=... to pick one)
#
# 1. installs the GPU extras (onnxruntime-gpu, tensorrt, cuda-python) when a GPU is visible and
#    the package registry answers; says so and goes on without them otherwise;
# 2. the torch CUDA runner on the demo, fp32 and fp16, timed with CUDA events by the bench layer;
# 3. `pytest -m "gpu or tensorrt"`;
# 4. scripts/bench_gpu.py: demo + ResNet-18-style CNN on torch eager CUDA, ort-cuda, ort-trt,
#    tensorrt fp32/fp16/int8, batch 1 and 32.
# Every piece that cannot run is skipped with a line saying why. Exit status: 1 when a GPU test
# failed, else 0 (also when everything was skipped).
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu-check}"
PY="${PYTHON:-$(command -v python || command -v python3)}"
mkdir -p "$OUT"
REPORT="$OUT/gpu_check.md"
STATUS=0

say() { echo "$*"; echo "- $*" >>"$REPORT"; }
section() { echo; echo "== $*"; printf '\n## %s\n\n' "$*" >>"$REPORT"; }
block() { echo '```' >>"$REPORT"; cat "$1" >>"$REPORT"; echo '```' >>"$REPORT"; }

{
  echo "# torchship GPU check"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), python $PY"
} >"$REPORT"

section "GPU"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader \
    >"$OUT/nvidia_smi.txt" 2>&1 || true
  say "nvidia-smi: $(head -n1 "$OUT/nvidia_smi.txt")"
else
  say "nvidia-smi: not found"
fi
if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  HAVE_GPU=1
  say "torch sees: $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)')"
else
  HAVE_GPU=0
  say "skipped: torch sees no CUDA GPU ($("$PY" -c 'import torch; print("torch", torch.__version__)' 2>&1 | tail -n1)); every GPU piece below is skipped"
fi

section "GPU extras"
has_cuda_ep() { "$PY" -c 'import sys, onnxruntime as o; sys.exit(0 if "CUDAExecutionProvider" in o.get_available_providers() else 1)' 2>/dev/null; }
has_trt() { "$PY" -c 'import tensorrt' 2>/dev/null; }
registry_ok() { timeout 60 "$PY" -m pip index versions onnxruntime-gpu >/dev/null 2>&1; }
if [ "$HAVE_GPU" = 0 ]; then
  say "skipped: no GPU, so no GPU extras installed"
elif has_cuda_ep && has_trt; then
  say "already installed: onnxruntime-gpu and tensorrt"
elif ! registry_ok; then
  say "skipped: the package registry is unreachable; running with what is installed"
else
  if ! has_cuda_ep; then
    ORT_CPU="$("$PY" -c 'import onnxruntime; print(onnxruntime.__version__)' 2>/dev/null || true)"
    # onnxruntime and onnxruntime-gpu share the onnxruntime/ folder: installing one over the
    # other leaves a mix of both, so the CPU package goes first.
    "$PY" -m pip uninstall -y -q onnxruntime >"$OUT/pip_ort.txt" 2>&1 || true
    if "$PY" -m pip install -q onnxruntime-gpu >>"$OUT/pip_ort.txt" 2>&1 && has_cuda_ep; then
      say "installed onnxruntime-gpu ($("$PY" -c 'import onnxruntime; print(onnxruntime.__version__)'))"
    else
      say "onnxruntime-gpu did not install or has no CUDA provider (see pip_ort.txt); restoring onnxruntime ${ORT_CPU:-latest}"
      "$PY" -m pip uninstall -y -q onnxruntime-gpu >>"$OUT/pip_ort.txt" 2>&1 || true
      # --no-deps: its dependencies are still installed; letting pip resolve them again could
      # move numpy/protobuf away from the tested versions.
      "$PY" -m pip install -q --no-deps --force-reinstall "onnxruntime${ORT_CPU:+==$ORT_CPU}" >>"$OUT/pip_ort.txt" 2>&1 || true
    fi
  fi
  if ! has_trt; then
    if "$PY" -m pip install -q "tensorrt>=8.6" "cuda-python>=12" >"$OUT/pip_trt.txt" 2>&1 && has_trt; then
      say "installed tensorrt $("$PY" -c 'import tensorrt; print(tensorrt.__version__)')"
    else
      say "tensorrt did not install (see pip_trt.txt)"
    fi
  fi
fi
say "runtimes available: $("$PY" -c 'from torchship.runtimes import available_runners; print(", ".join(available_runners()))')"

section "torch CUDA runner (bench layer, CUDA-event timing)"
if [ "$HAVE_GPU" = 1 ]; then
  "$PY" - >"$OUT/torch_cuda.txt" 2>&1 <<'EOF'
from dataclasses import replace
from torchship.artifact import Precision
from torchship.models import load_demo
from torchship.runtimes import BenchConfig, bench_runner

eager = load_demo().eager()
config = BenchConfig(warmup=20, min_time_s=1.0)
for precision in (Precision.FP32, Precision.FP16):
    for batch in (1, 32):
        r = bench_runner("torch-cuda", replace(eager, precision=precision), config=config, batch=batch)
        print(f"demo {precision.value} batch {batch}: p50 {r.latency_ms['p50']:.3f} ms "
              f"({r.timing['clock']}, copies included: {r.timing['includes_copies']}), "
              f"cold start {r.cold_start_ms:.0f} ms")
EOF
  if [ $? -eq 0 ]; then say "torch-cuda ran:"; else say "torch-cuda FAILED:"; STATUS=1; fi
  block "$OUT/torch_cuda.txt"
else
  say "skipped: no CUDA GPU"
fi

section 'pytest -m "gpu or tensorrt"'
"$PY" -m pytest -m "gpu or tensorrt" -q -rs -p no:cacheprovider >"$OUT/pytest_gpu.txt" 2>&1
RC=$?
if [ $RC -eq 0 ] || [ $RC -eq 5 ]; then
  say "result: $(tail -n1 "$OUT/pytest_gpu.txt")"
else
  say "FAILED (exit $RC): $(tail -n1 "$OUT/pytest_gpu.txt")"
  STATUS=1
fi
block "$OUT/pytest_gpu.txt"

section "GPU benchmark"
if "$PY" scripts/bench_gpu.py --out "$OUT" >"$OUT/bench_gpu.log" 2>&1; then
  tail -n +2 "$OUT/bench_gpu.md" >>"$REPORT"
  echo "(rows above; raw numbers in bench_gpu.json)"
else
  say "bench_gpu.py FAILED (see bench_gpu.log): $(tail -n1 "$OUT/bench_gpu.log")"
  STATUS=1
fi

echo
echo "report: $REPORT"
exit $STATUS
