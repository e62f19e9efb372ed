#!/bin/bash
# Session 15, call 8 (2 x H200): every GPU test of gpu_replay after the review mend (ce_push_rows).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/g8; O=/tmp/g8; mkdir -p $O
mkdir -p /work/main/target/release && cp $D/llep-trace /work/main/target/release/llep-trace
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $O/smi.txt
timeout 300 $D/gpu_replay --test-threads 1 > $O/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $O/gpu-tests.txt
grep -E "^test |test result|rc=|panicked" $O/gpu-tests.txt
tar czf $OUT/g8.tgz -C /tmp g8
