#!/bin/bash
# Session 13, call 6 (2 x H200): after the review mend (9abe794: EP planned into the plan buffer, the decider's state), the
# GPU test that compares --decision-thread on and off, and the replay tests around llep-auto.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/c6
mkdir -p /work/main/target/release && cp $D/llep-trace /work/main/target/release/llep-trace
timeout 100 $D/gpu_replay-882d1beca91b38f4 --test-threads 1 llep_auto replay_in_turns > $OUT/gpu-tests.txt 2>&1
echo "rc=$?"; grep -E "^test |test result" $OUT/gpu-tests.txt
