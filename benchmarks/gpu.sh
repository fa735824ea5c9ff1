#!/usr/bin/env bash
# Sparse decode on a CUDA GPU, in one command (from the repository root or anywhere):
#
#   bash benchmarks/gpu.sh            # the full run (about 15-30 min on one GPU, mostly model set-up)
#   bash benchmarks/gpu.sh --smoke    # the same steps at tiny sizes (a minute or two)
#
# 1. the kernel tests on the GPU: the Triton kernels compiled for it, and the CUDA cases of
#    tests/test_kernels.py (stops here when one fails: no timing of wrong kernels);
# 2. the kernel table: Triton input-sparse / threshold / output-sparse kernels against cuBLAS and
#    the torch fallback at Gemma 3 270M, Llama-1B and Llama-2-7B FFN shapes, bf16, batch 1/4/8,
#    timed from CUDA-graph replays (benchmarks/kernels_cuda.py) -> results/kernels-cuda.json;
# 3. the method table (`tda bench --device cuda --dtype bf16`) on random:llama-1b,
#    random:llama-2-7b and gemma-3-270m, in two runs per model as in the README's CPU table
#    (CATS without TEAL/WINA, which make W_up input-major) -> results/latency-<model>-{a,b}-cuda.json.
#    No CUDA graphs here: a token-wise method picks a new active set at every step and reads its
#    size on the host, so a decode step cannot be captured; every method pays the same launches.
#
# Without a CUDA GPU it stops at once with one line on stderr (exit 2). TDA_GPU_SH_DEVICE=cpu runs
# the --smoke steps on CPU tensors through Triton's interpreter: a check of this script only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
RESULTS=benchmarks/results
SMOKE=0
for arg in "$@"; do
  case "$arg" in
    --smoke) SMOKE=1 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "benchmarks/gpu.sh: unknown argument '$arg' (use --smoke or --help)" >&2; exit 2 ;;
  esac
done

DEVICE=${TDA_GPU_SH_DEVICE:-cuda}
if [[ "$DEVICE" == cpu ]]; then
  SMOKE=1
  export TRITON_INTERPRET=1
  RESULTS=${TDA_GPU_SH_RESULTS:-$(mktemp -d)}
else
  if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "benchmarks/gpu.sh: no CUDA GPU found (torch.cuda.is_available() is False); run it on a machine with an NVIDIA GPU and a CUDA build of torch" >&2
    exit 2
  fi
  unset TRITON_INTERPRET  # compiled kernels, not the interpreter
  if ! "$PY" -c "import sys; from tda.engine import triton_backend as t; sys.exit(0 if t.info()['available'] else 1)"; then
    echo "benchmarks/gpu.sh: triton does not import (pip install -e '.[dev]'); the CUDA path would be the torch fallback" >&2
    exit 2
  fi
fi
mkdir -p "$RESULTS"
step() { echo; echo "=== $* ($(date -u +%H:%M:%S) UTC)"; }

if (( SMOKE )); then
  KERNEL_ARGS=(--models "$([[ $DEVICE == cpu ]] && echo tiny || echo gemma-3-270m,llama-1b)"
               --batches 1,4 --fractions 0.2,0.5 --rounds 3 --iters 5)
  MODELS=("$([[ $DEVICE == cpu ]] && echo tiny-llama || echo random:llama-1b)")
  BENCH_ARGS=(--prompt-tokens 8 --new-tokens 4 --rounds 1 --bandwidth-mb 0)
  TESTS=(tests/test_triton_kernels.py)
else
  KERNEL_ARGS=(--models gemma-3-270m,llama-1b,llama-2-7b --batches 1,4,8 --rounds 20 --iters 50)
  MODELS=(random:llama-1b random:llama-2-7b gemma-3-270m)
  BENCH_ARGS=(--prompt-tokens 16 --new-tokens 32 --rounds 5)
  TESTS=(tests/test_triton_kernels.py tests/test_kernels.py)
fi

step "1/3 kernel tests on $DEVICE"
"$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}"

step "2/3 kernel table ($DEVICE, bf16)"
"$PY" benchmarks/kernels_cuda.py --device "$DEVICE" --dtype bf16 "${KERNEL_ARGS[@]}" \
  --out "$RESULTS/kernels-cuda.json"

step "3/3 method table ($DEVICE, bf16)"
for model in "${MODELS[@]}"; do
  name=${model#random:}
  "$PY" -m tda bench --model "$model" --device "$DEVICE" --dtype bf16 \
    --methods stock,dense,tt@cett,cats@cett,griffin,tda --densities 0.5 "${BENCH_ARGS[@]}" \
    --out "$RESULTS/latency-$name-a-cuda.json"
  "$PY" -m tda bench --model "$model" --device "$DEVICE" --dtype bf16 \
    --methods dense,teal,wina --densities 0.5 "${BENCH_ARGS[@]}" \
    --out "$RESULTS/latency-$name-b-cuda.json"
done

step "done"
ls -l "$RESULTS"/*-cuda.json
