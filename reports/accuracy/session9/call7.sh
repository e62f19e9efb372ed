#!/bin/bash
# Session 9, call 7 (2 x H200): gemm-bench's layer variants timed in rounds (every variant once a round,
# so the card's drift falls on all alike): gpt-oss 64 x 2,048 and 32 x 4,096, Qwen3 64 x 64, Mixtral 4 x 4,096,
# two runs each on the two GPUs; then all GPU tests.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/v7; B=$D/llep-trace
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
bench() { CUDA_VISIBLE_DEVICES=$5 timeout 120 $B gemm-bench -q --shape $2 --layer-experts $3 --layer-rows $4 --rows $4 --gemm lt --reps 10 > $OUT/bench-$1.txt 2>&1; }
bench gptoss-4g 2880:2880 32 4096 0 & bench gptoss-2g 2880:2880 64 2048 1 & wait
bench gptoss-4g-b 2880:2880 32 4096 1 & bench gptoss-2g-b 2880:2880 64 2048 0 & wait
bench qwen3-512 2048:768 64 64 0 & bench mixtral 4096:14336 4 4096 1 & wait
for f in $OUT/bench-*.txt; do echo "== $(basename $f)"; grep -E "^lt +layer|batched act" $f; done
timeout 100 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
timeout 40 $D/gpu_gemm --test-threads 1 >> $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
grep -E "test result|rc=|panicked" $OUT/gpu-tests.txt
