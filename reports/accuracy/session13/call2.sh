#!/bin/bash
# Session 13, call 2 (2 x H200): commit 8e64559's build (llep-auto on its warm decision thread,
# the gate's margins chosen on measured pairs): every GPU test, then passes G23/E18 and G24/E19
# of the matrix, host checkpoints on.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/c2; B=$D/llep-trace
export T0=$(date +%s)
mkdir -p $OUT/aux
{ date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader; nproc; } > $OUT/aux/smi.txt 2>&1
mkdir -p /work/main/target/release && cp $B /work/main/target/release/llep-trace
timeout 200 $D/gpu_replay-882d1beca91b38f4 --test-threads 1 > $OUT/aux/gpu-replay-tests.txt 2>&1
echo "gpu_replay rc=$? $(( $(date +%s) - T0 ))s"; grep "test result" $OUT/aux/gpu-replay-tests.txt
timeout 100 $D/gpu_gemm-4d7f63826ba33530 --test-threads 1 > $OUT/aux/gpu-gemm-tests.txt 2>&1
echo "gpu_gemm rc=$? $(( $(date +%s) - T0 ))s"; grep "test result" $OUT/aux/gpu-gemm-tests.txt
export LLEP_TRACE_HOST_TIMING=1
bash $D/matrix_pass.sh $B g23 on 520
bash $D/matrix_pass.sh $B e18 off 520
bash $D/matrix_pass.sh $B g24 on 520
bash $D/matrix_pass.sh $B e19 off 560
mv $OUT/logs $OUT/matrix.log $OUT/aux/ 2>/dev/null
cd $OUT && tar czf aux.tgz aux && rm -rf aux
echo "total $(( $(date +%s) - T0 ))s"
