#!/bin/bash
# Training-step replay on the device (issue 13 part 1): run from the repo
# root with the binary at $B (default .dev-gpu/trainrep/llep-trace) and $OUT.
# 1) correctness on small shapes: 1 and 2 GPUs, EP and LLEP (1.3 and
#    always), both activations, with and without --recompute, one group
#    larger than a GEMM unit (16,384 rows); every row's rel err < 1e-2;
# 2) the target on 2 GPUs: gpt-oss-120b layer, 32,768 tokens per
#    GPU, six scenarios, EP and LLEP 1.3, with the simulated twin.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
B=${B:-.dev-gpu/trainrep/llep-trace}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
S="$OUT/small.txt"
: > "$S"
small() {  # gpus act recompute tokens D I extra...
  local g=$1 act=$2 rc=$3 t=$4 d=$5 i=$6; shift 6
  echo "== small: gpus $g act $act recompute $rc tokens $t D $d I $i $*" >> "$S"
  timeout 40 $B replay --pass train $rc --act $act --gpus $g --synthetic balanced,95:1,50:4 \
    --policy ep,llep --ratio 1.3,always --min-gemm 16 --experts 8 --top-k 2 \
    --hidden-size $d --intermediate-size $i --tokens-per-rank $t --samples 64 \
    --runs 3 --warmup 1 "$@" >> "$S" 2>&1 || echo "FAILED (rc $?)" >> "$S"
}
{
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
date -u
t0=$(date +%s)
small 1 gpt-oss "" 512 256 128
small 1 swiglu --recompute 512 256 128
small 2 gpt-oss "" 1024 256 128
small 2 gpt-oss --recompute 1024 256 128
small 2 swiglu "" 1024 256 128
small 2 swiglu --recompute 1024 256 128
# one expert over two GEMM units (EP 95:1: ~38k rows on GPU 0)
small 2 gpt-oss "" 20000 128 64
echo "small runs: $(( $(date +%s) - t0 ))s"
grep -E "rel err|FAILED|error" "$S" | head -80
echo "== target: 2 x GPU, gpt-oss-120b layer, 32768 tokens/GPU =="
timeout ${TARGET_S:-110} $B replay --gpus 2 --tokens-per-rank 32768 \
  --synthetic balanced,30:4,50:4,80:4,95:4,95:1 --ratio 1.3 --policy ep,llep \
  --alpha 1.0 --min-gemm 1024 --pass train --with-sim h200 ${TARGET_RUNS:-} \
  --out "$OUT/train-2gpu.parquet" > "$OUT/train-2gpu.txt" 2> "$OUT/train-2gpu.err" \
  || echo "TARGET FAILED (rc $?)"
echo "total: $(( $(date +%s) - t0 ))s"
} > "$OUT/log.txt" 2>&1
cat "$OUT/log.txt" | tail -c 3000
echo "--- target table ---"
cat "$OUT/train-2gpu.txt" 2>/dev/null | cut -c1-400
tail -15 "$OUT/train-2gpu.err" 2>/dev/null
