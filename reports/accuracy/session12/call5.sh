#!/bin/bash
# Session 12, call 5 (2 x H200): this session's build (GEMM tables in bursts, the power cap by duty, the
# re-stamped profile): the GPU tests, then passes G19 (graphs) and E14 (issued one by one) of the matrix,
# 128-8,192 tok/GPU, scored offline against the new profile (llep-auto decides with it).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/s12c5; B=$D/llep-trace
export T0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
timeout 120 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
timeout 60 $D/gpu_gemm --test-threads 1 >> $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
grep -E "test result|rc=|panicked" $OUT/gpu-tests.txt
bash $D/matrix_pass.sh $B g19 on 200
bash $D/matrix_pass.sh $B e14 off 330
echo "total $(( $(date +%s) - T0 ))s"
