#!/bin/bash
# Session 11, call 9 (1 x H200): the GEMM tables' protocol at large M. gemm-bench (cuBLASLt) on the Mixtral and
# DeepSeek-V3 experts: single GEMMs at 6,144-8,192 rows, each with another expert's (cold) weights, against a
# layer run of 4 experts x 7,782 rows back to back (the 95:1 hot expert's size), with and without the activation.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
D=.dev-gpu/s11c9; B=$D/llep-trace
{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader; } > $OUT/smi.txt
for shape in 4096:14336 7168:2048; do
  timeout 200 $B gemm-bench -q --shape $shape --rows 6144,7782,8192 --layer-experts 4 --layer-rows 7782 --reps 10 --gemm lt \
    > $OUT/gemm-$shape.txt 2>&1 || echo "FAILED $shape"
  cat $OUT/gemm-$shape.txt | tail -20
done
