#!/usr/bin/env bash
# Everything a GPU run owes the project, in one go: the kernel and encoder tests on
# the GPU (bf16 included), the attention launch-config sweep, the kernel benchmarks
# and the encoder benchmark against transformers. Results land in
# benchmarks/results/<gpu>/; logs in LOGDIR (default: benchmarks/results/<gpu>/logs).
# Each step has its own time limit, and a failing step does not stop the next.
#
#     bash benchmarks/gpu_suite.sh [LOGDIR]
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
slug=$($PY -c "from bertcore.bench.lib import device_slug; print(device_slug('cuda'))") || exit 1
LOGDIR=${1:-benchmarks/results/$slug/logs}
mkdir -p "$LOGDIR"

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$LOGDIR/$name.log" 2>&1
    local rc=$?
    printf '%-14s rc=%-3s %4ss\n' "$name" "$rc" "$((SECONDS - t0))" | tee -a "$LOGDIR/summary.txt"
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  $PY -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__,
'transformers', transformers.__version__, torch.cuda.get_device_name())"; } >"$LOGDIR/env.txt" 2>&1

# BERT's shapes (head_dim 64, hidden 768) in the 16-bit dtypes a GPU trains in; the
# scripts themselves sweep wider when run alone.
step tests        ${T_TESTS:-240} $PY -m pytest -q -rs -p no:cacheprovider ${TESTS:-tests/kernels tests/heads/test_heads_cuda.py}
step attention    ${T_ATTN:-80}   $PY benchmarks/bench_attention.py --dtypes bf16 fp16 --head-dims 64
step layer_norm   ${T_LN:-50}     $PY benchmarks/bench_layer_norm.py --dtypes bf16 fp32 --hidden 768 --tokens 16384 65536
step encoder      ${T_ENC:-90}    $PY benchmarks/bench_encoder.py --dtype bf16
step tune         ${T_TUNE:-100}  $PY benchmarks/tune_attention.py --dtypes bf16 --head-dims 64
grep -h -A12 "bertcore vs transformers" "$LOGDIR/encoder.log" | tail -14
tail -3 "$LOGDIR/tests.log"
cat "$LOGDIR/summary.txt"
