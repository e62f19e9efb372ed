#!/bin/bash
# Lead, last call: GPU integration tests of the final main (after the
# fidelity merge), and llep-auto replayed at a decode and a prefill size.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
D=.dev-gpu/lead5; B=$D/llep-trace
G=$(nvidia-smi -L | grep -c '^GPU ')
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
mkdir -p /work/main/target/release
cp $B /work/main/target/release/llep-trace
timeout 150 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
timeout 60 $D/gpu_gemm --test-threads 1 >> $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
grep -E "test result|rc=|FAILED|panicked" $OUT/gpu-tests.txt
for t in 512 32768; do
  timeout 40 $B -q replay --gpus $G --tokens-per-rank $t --synthetic balanced,30:4,95:1 --policy ep,llep \
    --ratio 1.3,auto --with-sim h200 --out $OUT/auto-$t.parquet > $OUT/auto-$t.txt 2>&1; echo "auto $t rc=$?"
done
grep measured $OUT/auto-*.txt | cut -c1-110
