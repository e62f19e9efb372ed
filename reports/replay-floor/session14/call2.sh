#!/bin/bash
# Session 14, call 2: the fused kernel's variants (c1, c2 = clusters of two sharing weight loads; -noepi = no epilogue).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/f2
B=$D/llep-trace
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv > $OUT/smi.txt
date -u > $OUT/date.txt
for v in c2 c1 c2-noepi c1-noepi c2; do
  LLEP_TRACE_FUSED_KERNEL=$v timeout 120 $B gemm-bench --gemm lt,fused --reps 5 --rows 1024,4096,16384 > $OUT/bench-$v.txt 2>&1
  echo "== $v rc=$?"
  grep -E "^fused|layer  |layer\+act batched|FAIL|rror" $OUT/bench-$v.txt | grep -v "down" | head -12
  grep -c "ok$" $OUT/bench-$v.txt
done
