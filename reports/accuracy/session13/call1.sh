#!/bin/bash
# Session 13, call 1 (2 x H200): llep-auto's warm decision thread against deciding inline,
# in alternating matrix passes (graphs, then eager), host checkpoints on; the GPU test of the
# new path; calibrate's power measurement after the light_load refactor (ea67749).
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/c1; B=$D/llep-trace
export T0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader; nproc; $B --version; } > $OUT/smi.txt 2>&1
mkdir -p /work/main/target/release && cp $B /work/main/target/release/llep-trace
timeout 120 $D/gpu_replay-882d1beca91b38f4 --test-threads 1 llep_auto_decides replay_in_turns > $OUT/gpu-tests.txt 2>&1
echo "gpu tests rc=$? $(( $(date +%s) - T0 ))s"; grep "test result" $OUT/gpu-tests.txt
CUDA_VISIBLE_DEVICES=0 timeout 120 $B calibrate --gpus 1 --gemm-only --gemm lt --base h200 --grid-shapes 2880:2880 \
  --out $OUT/cal-power.json > $OUT/cal-power.txt 2>&1
echo "calibrate rc=$? $(( $(date +%s) - T0 ))s"; grep -i "power cap" $OUT/cal-power.txt
export LLEP_TRACE_HOST_TIMING=1
EXTRA="--decision-thread on" bash $D/matrix_pass.sh $B g22 on 330
EXTRA="--decision-thread off" bash $D/matrix_pass.sh $B g22x on 400
EXTRA="--decision-thread on" bash $D/matrix_pass.sh $B e17 off 470
EXTRA="--decision-thread off" bash $D/matrix_pass.sh $B e17x off 540
cd $OUT && tar czf logs.tgz logs && rm -rf logs
echo "total $(( $(date +%s) - T0 ))s"
