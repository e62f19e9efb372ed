#!/bin/bash
# Session 5, call 7 (2 x H200): GPU tests of final main, then the README's
# two replay examples (forward, and the training step) with the final binary.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
D=.dev-gpu/lead13; B=$D/llep-trace
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
timeout 150 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
timeout 60 $D/gpu_gemm --test-threads 1 >> $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
timeout 120 $B replay --gpus 2 --tokens-per-rank 32768 --synthetic balanced,30:4,50:4,80:4,95:4,95:1 \
      --policy ep,llep --ratio 1.3 --alpha 1.0 --min-gemm 1024 --with-sim h200 --out $OUT/gptoss.parquet > $OUT/readme-replay.txt 2> $OUT/readme-replay.err
echo "replay rc=$?" >> $OUT/gpu-tests.txt
timeout 150 $B replay --gpus 2 --tokens-per-rank 32768 --synthetic balanced,30:4,50:4,80:4,95:4,95:1 \
      --ratio 1.3 --policy ep,llep --alpha 1.0 --min-gemm 1024 --pass train --with-sim h200 --out $OUT/train.parquet > $OUT/readme-train.txt 2> $OUT/readme-train.err
echo "train rc=$?" >> $OUT/gpu-tests.txt
grep -E "test result|rc=|FAILED|panicked" $OUT/gpu-tests.txt; grep measured $OUT/readme-replay.txt | cut -c1-60
