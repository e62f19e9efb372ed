#!/bin/bash
# Session 14, call 4: the fused kernel with its epilogue on warps of its own (staged), against noepi and lt; replay on one GPU.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/f4
B=$D/llep-trace
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv > $OUT/smi.txt
date -u > $OUT/date.txt
for v in staged noepi staged; do
  LLEP_TRACE_FUSED_KERNEL=$v timeout 120 $B gemm-bench --gemm lt,fused --reps 5 --rows 1024,4096,16384 > $OUT/bench-$v.txt 2>&1
  echo "== $v rc=$?"
  grep -E "^fused|CTAs|layer  |layer\+act batched|FAIL|rror" $OUT/bench-$v.txt | grep -v "down" | head -9
  grep "relative error of its output" $OUT/bench-$v.txt | awk '{print $NF, $(NF-1)}' | sort | uniq -c | head -4
done
for g in lt fused; do
  timeout 150 $B replay --gpus 1 --tokens-per-rank 16384 --synthetic balanced,95:1 --policy ep --gemm $g --out $OUT/layer-$g.parquet > $OUT/replay-$g.txt 2>&1
  echo "replay $g rc=$?"
  tail -3 $OUT/replay-$g.txt | cut -c1-200
done
