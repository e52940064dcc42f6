#!/usr/bin/env bash
# Everything a GPU run owes the project, in one go of under 8 minutes: the kernel,
# encoder, CUDA-graph and head tests on the GPU (bf16 included), the kernel
# benchmarks, and the encoder against transformers (SDPA, and SDPA under
# torch.compile) at batch 16, 32 and 128 with bertcore's CUDA-graph steps. Results
# land in benchmarks/results/<gpu>/ (CSVs, PNGs); logs in LOGDIR (default:
# benchmarks/results/<gpu>/logs). Each step has its own time limit (the sum is 480 s;
# T_<STEP>=0 skips a step), a failing step does not stop the next, and the encoder
# CSVs are written after every case, so a step cut short keeps what it measured.
#
#     bash benchmarks/gpu_suite.sh [LOGDIR]
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
# A bare machine: install the checkout and its head plugins (entry points) without touching
# the machine's own torch/triton/transformers (no deps, no network needed).
$PY -c "import bertcore, bertcore_kernels, bertcore_classification" 2>/dev/null ||
    $PY -m pip install -q --no-deps --no-build-isolation -e . $(for h in heads/*/; do printf -- '-e %s ' "$h"; done) \
        >/tmp/gpu_suite_setup.log 2>&1 || {
    tail -5 /tmp/gpu_suite_setup.log   # no install: the core from the checkout still runs (no head plugins)
    export PYTHONPATH=$PWD:$PWD/kernels${PYTHONPATH:+:$PYTHONPATH}; }
slug=$($PY -c "from bertcore.bench.lib import device_slug; print(device_slug('cuda'))") || exit 1
LOGDIR=${1:-benchmarks/results/$slug/logs}
mkdir -p "$LOGDIR"

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    [ "$limit" -gt 0 ] || { printf '%-16s skipped\n' "$name" | tee -a "$LOGDIR/summary.txt"; return; }
    local t0=$SECONDS
    timeout "$limit" "$@" >"$LOGDIR/$name.log" 2>&1
    local rc=$?
    printf '%-16s rc=%-3s %4ss\n' "$name" "$rc" "$((SECONDS - t0))" | tee -a "$LOGDIR/summary.txt"
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  $PY -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__,
'transformers', transformers.__version__, torch.cuda.get_device_name())"; } >"$LOGDIR/env.txt" 2>&1

# BERT's shapes (head_dim 64, hidden 768) in the 16-bit dtypes a GPU trains in; the
# scripts themselves sweep wider when run alone.
step tests          ${T_TESTS:-150}  $PY -m pytest -q -rs -p no:cacheprovider ${TESTS:-tests/kernels tests/core/test_cuda_graphs.py tests/heads/test_heads_cuda.py}
# the issue-14 comparison only (one-pass and deterministic backward, PyTorch's varlen
# FlashAttention, SDPA with a key mask); the full sweep has 8 providers and does not fit
step attention      ${T_ATTN:-70}    $PY benchmarks/bench_attention.py --dtypes bf16 --head-dims 64 --modes full \
                                     --providers bertcore-triton bertcore-triton-det torch-varlen sdpa-mask \
                                     --lengths equal-128 equal-512 mixed-16-128 mixed-16-512
step layer_norm     ${T_LN:-50}      $PY benchmarks/bench_layer_norm.py --dtypes bf16 fp32 --hidden 768 --tokens 16384 65536
# bertcore (eager packed, CUDA graphs) against transformers SDPA; bert-base at batch 128 gives the MFU
ENC="$PY benchmarks/bench_encoder.py --dtype bf16 --batches mixed-16-128 --batch-sizes 16 32 128"
step encoder        ${T_ENC:-70}     $ENC --shapes minilm bert-base --rounds 15 --budget 6 \
                                     --providers bertcore-packed bertcore-graphs hf-sdpa
# the same against torch.compile (default and reduce-overhead, dynamic shapes: one compile per
# mode); compiling takes most of these steps, so inference and training run apart
COMPILED="--shapes minilm --rounds 10 --budget 4 --providers bertcore-graphs hf-sdpa hf-sdpa-compile hf-sdpa-compile-ro"
step compile_infer  ${T_COMPILE_INFER:-50} $ENC $COMPILED --modes inference --name encoder-compile-inference
step compile_train  ${T_COMPILE_TRAIN:-90} $ENC $COMPILED --modes train --name encoder-compile-train
step tune           ${T_TUNE:-0}     $PY benchmarks/tune_attention.py --dtypes bf16 --head-dims 64
for log in encoder compile_infer compile_train; do
    grep -h -A14 "bertcore vs transformers" "$LOGDIR/$log.log" 2>/dev/null
done
tail -3 "$LOGDIR/tests.log"
cat "$LOGDIR/summary.txt"
