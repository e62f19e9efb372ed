#!/bin/bash
# Session 14, call 7: after the review mend (the activation shared in kernels/bf16_act.cuh), the GPU tests.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/f7
mkdir -p /work/main/target/release && cp $D/llep-trace /work/main/target/release/llep-trace
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
timeout 150 $D/gpu_gemm --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
timeout 300 $D/gpu_replay --test-threads 1 >> $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
grep -E "^test |test result|rc=" $OUT/gpu-tests.txt
