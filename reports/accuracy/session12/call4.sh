#!/bin/bash
# Session 12, call 4 (2 x H200): the GEMM tables re-measured in bursts (each sample after light load, a one-thread spin, at most
# 8 ms), eager on GPU 0 and as CUDA graphs on GPU 1 at once, each with the power measurement (burst,
# sustained, duty sweep) of the first grid shape.
D=.dev-gpu/s12c4; B=$D/llep-trace
{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv,noheader; } > $OUT/smi.txt
G=2880:2880,4096:14336,2048:768,7168:2048,2048:1024,1024:512,1024:2048,4096:512,4096:2048,8192:512,8192:2048
t0=$(date +%s)
CUDA_VISIBLE_DEVICES=0 timeout 420 $B calibrate --gpus 1 --gemm-only --gemm lt --base h200 --grid-shapes $G \
  --out $OUT/gemm-lt.json > $OUT/gemm-lt.txt 2>&1 &
C1=$!
CUDA_VISIBLE_DEVICES=1 timeout 420 $B calibrate --gpus 1 --gemm-only --gemm lt --cuda-graphs on --base h200 --grid-shapes $G \
  --out $OUT/gemm-lt-graphs.json > $OUT/gemm-lt-graphs.txt 2>&1 &
C2=$!
wait $C1; echo "grid eager rc=$? $(( $(date +%s) - t0 ))s"
wait $C2; echo "grid graphs rc=$? $(( $(date +%s) - t0 ))s"
tail -5 $OUT/gemm-lt.txt $OUT/gemm-lt-graphs.txt
python3 -c "
import json
for f in ('gemm-lt','gemm-lt-graphs'):
    p=json.load(open('$OUT/'+f+'.json')); r=p.get('raw') or {}
    print(f, json.dumps(r.get('power')))
"
