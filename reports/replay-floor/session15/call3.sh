#!/bin/bash
# Session 15, call 3 (1 x H200): the GEMM grid through --gemm fused, for the profile's fused_gemm_tables.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
D=.dev-gpu/g3; B=$D/llep-trace; O=/tmp/g3; mkdir -p $O
{ date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader; } > $O/smi.txt
SH=2880:2880,4096:14336,2048:768,7168:2048,2048:1024,1024:512,1024:2048,4096:512,4096:2048,8192:512,8192:2048
t0=$(date +%s)
timeout 500 $B calibrate --gpus 1 --gemm-only --gemm fused --base h200 --grid-shapes $SH --out $O/gemm-fused.json > $O/gemm-fused.txt 2>&1
echo "grid fused rc=$? $(( $(date +%s) - t0 ))s" | tee $O/stdout.txt
grep -i "fused\|error" $O/gemm-fused.txt | head -30
tar czf $OUT/g3.tgz -C /tmp g3
