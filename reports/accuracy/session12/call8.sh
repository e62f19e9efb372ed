#!/bin/bash
# Session 12, call 8 (1 x H200): the backward GEMM tables re-measured in bursts (each sample after light load,
# at most 8 ms), the five shapes of reports/train/bwd-gemm.md.
D=.dev-gpu/s12c8; B=$D/llep-trace
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
t0=$(date +%s)
timeout 330 $B calibrate --bwd-only --grid-shapes 2880:2880,2048:1024,4096:14336,2048:768,7168:2048 \
  --reps 5 --gemm lt --base h200 --out $OUT/bwd-grid-h200.json > $OUT/bwd.txt 2>&1; echo "bwd rc=$? $(( $(date +%s) - t0 ))s"
tail -25 $OUT/bwd.txt
