#!/bin/bash
# Session 14, call 1: the fused gate_up kernel's first run (correctness against lt, speed), then the replayed layer.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/f1
B=$D/llep-trace
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $OUT/smi.txt
date -u > $OUT/date.txt
timeout 180 $B gemm-bench --gemm lt,fused --reps 5 --rows 1024,4096,16384 > $OUT/bench.txt 2>&1
echo "bench rc=$?"
grep -E "fused|layer|gate_up|FAIL|rror" $OUT/bench.txt | head -40
for g in lt fused; do
  timeout 150 $B replay --gpus 1 --tokens-per-rank 16384 --synthetic balanced,95:1 --policy ep --ratio 1.3 --alpha 1.0 --min-gemm 1024 --gemm $g --out $OUT/layer-$g.parquet > $OUT/replay-$g.txt 2>&1
  echo "replay $g rc=$?"
  tail -12 $OUT/replay-$g.txt
done
