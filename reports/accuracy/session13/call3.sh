#!/bin/bash
# Session 13, call 3 (2 x H200): the helper's rehearsal with the experts rotated (this build) against
# rehearsing the very counts that come next (call 2's build, 8e64559), passes in turns on one lease:
# G25 / G25u (graphs), E20 / E20u (one by one); the decider's GPU test first.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/c3; B=$D/llep-trace; U=$D/llep-trace-unrotated
export T0=$(date +%s)
mkdir -p $OUT/aux
{ date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader; nproc; } > $OUT/aux/smi.txt 2>&1
mkdir -p /work/main/target/release && cp $B /work/main/target/release/llep-trace
timeout 60 $D/gpu_replay-882d1beca91b38f4 --test-threads 1 llep_auto_decides > $OUT/aux/gpu-tests.txt 2>&1
echo "gpu test rc=$? $(( $(date +%s) - T0 ))s"; grep "test result" $OUT/aux/gpu-tests.txt
export LLEP_TRACE_HOST_TIMING=1
bash $D/matrix_pass.sh $B g25 on 400
bash $D/matrix_pass.sh $U g25u on 400
bash $D/matrix_pass.sh $B e20 off 480
bash $D/matrix_pass.sh $U e20u off 540
mv $OUT/logs $OUT/matrix.log $OUT/aux/ 2>/dev/null
cd $OUT && tar czf aux.tgz aux && rm -rf aux
echo "total $(( $(date +%s) - T0 ))s"
