#!/bin/bash
# Session 13, call 4 (2 x H200): the final build (f9a64d1): the decider GPU test, then passes G26, E21, G27, E22.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/c4; B=$D/llep-trace
export T0=$(date +%s)
mkdir -p $OUT/aux
{ date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader; nproc; } > $OUT/aux/smi.txt 2>&1
mkdir -p /work/main/target/release && cp $B /work/main/target/release/llep-trace
timeout 60 $D/gpu_replay-882d1beca91b38f4 --test-threads 1 llep_auto_decides > $OUT/aux/gpu-tests.txt 2>&1
echo "gpu test rc=$? $(( $(date +%s) - T0 ))s"; grep "test result" $OUT/aux/gpu-tests.txt
export LLEP_TRACE_HOST_TIMING=1
bash $D/matrix_pass.sh $B g26 on 400
bash $D/matrix_pass.sh $B e21 off 470
bash $D/matrix_pass.sh $B g27 on 520
bash $D/matrix_pass.sh $B e22 off 560
mv $OUT/logs $OUT/matrix.log $OUT/aux/ 2>/dev/null
cd $OUT && tar czf aux.tgz aux && rm -rf aux
echo "total $(( $(date +%s) - T0 ))s"
