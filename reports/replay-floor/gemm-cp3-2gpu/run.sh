#!/bin/bash
# gemm15 (issue 15 part 1), CP3: expert GEMMs through cuBLAS vs autotuned
# cuBLASLt (tuned on a cold L2 now), act_rows with fast reciprocal + PDL.
# Microbenchmark on one GPU, tiny correctness checks, calibrate's GEMM grid
# through lt, the gpt-oss layer replay on all GPUs with --gemm lt and
# --gemm cublas, and one training step with lt.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
B=.dev-gpu/gemm15/llep-trace
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
G=$(nvidia-smi -L | wc -l)
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } > "$OUT/smi.txt" 2>&1
LAYER="--gpus $G --tokens-per-rank 32768 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3 --alpha 1.0 --min-gemm 1024"
TINY="--gpus 1 --tokens-per-rank 256 --experts 8 --top-k 2 --hidden-size 64 --intermediate-size 32 --runs 2 --warmup 1 --synthetic balanced,95:1 --ratio 1.3 --min-gemm 16"
{
echo "== gemm-bench (GPU 0) =="
CUDA_VISIBLE_DEVICES=0 timeout 35 $B -q gemm-bench --reps 5; echo "rc=$?"
echo "== tiny: gemm-bench 64:32, replay lt forward and train =="
CUDA_VISIBLE_DEVICES=0 timeout 8 $B -q gemm-bench --shape 64:32 --rows 8,100 --layer-experts 4 --layer-rows 64 --reps 2 | grep "lt vs"; echo "rc=$?"
CUDA_VISIBLE_DEVICES=0 timeout 8 $B -q replay $TINY | tail -6; echo "rc=$?"
CUDA_VISIBLE_DEVICES=0 timeout 8 $B -q replay $TINY --pass train | tail -6; echo "rc=$?"
echo "== calibrate --gemm-only --bwd through lt (GPU 0) =="
CUDA_VISIBLE_DEVICES=0 timeout 20 $B -q calibrate --gemm-only --bwd --grid-shapes 2880:2880 --grid-rows 256,4096 --reps 3 --out /tmp/g15-prof.json | tail -8; echo "rc=$?"
python3 -c "
import json; p=json.load(open('/tmp/g15-prof.json'))
print({k: (v if not isinstance(v,(list,dict)) else '...') for k,v in p.items() if 'gemm' in k.lower() or 'grid' in k.lower()})" 2>&1 | head -5
} > "$OUT/bench.txt" 2>&1
echo "== replay lt (default) =="
timeout 30 $B -q replay $LAYER > "$OUT/replay-lt.txt" 2>&1; echo "rc=$?" >> "$OUT/replay-lt.txt"
echo "== replay cublas =="
timeout 30 $B -q replay $LAYER --gemm cublas > "$OUT/replay-cublas.txt" 2>&1; echo "rc=$?" >> "$OUT/replay-cublas.txt"
echo "== train lt =="
timeout 25 $B -q replay --gpus $G --tokens-per-rank 32768 --synthetic 30:4 --policy ep,llep --ratio 1.3 \
  --alpha 1.0 --min-gemm 1024 --pass train --runs 5 --warmup 2 > "$OUT/train-lt.txt" 2>&1
echo "rc=$?" >> "$OUT/train-lt.txt"
cat "$OUT/smi.txt"
grep -E "^(cublas|lt) |rc=|lt vs|winner" "$OUT/bench.txt" | head -70
for f in replay-lt replay-cublas train-lt; do echo "== $f =="; tail -c 2200 "$OUT/$f.txt"; done
