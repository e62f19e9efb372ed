#!/bin/bash
# Training-step replay on the device (issue 13 part 1): run from the repo
# root with the binary at $B (default .dev-gpu/trainrep/llep-trace) and $OUT.
# 1) correctness on small shapes: 1 and 2 GPUs (4 when visible), EP and LLEP
#    (1.3 and always), both activations, with and without --recompute, one
#    expert larger than a GEMM unit (16,384 rows); every row's rel err < 1e-2;
# 2) the target on 2 GPUs: gpt-oss-120b layer, 32,768 tokens per
#    GPU, six scenarios, EP and LLEP 1.3, with the simulated twin; then
#    LLEP always (the 30:4 case the 1.3 gate leaves to EP), the target with
#    --recompute, and the target on 4 GPUs when 4 are visible.
# Writes at most 6 files: log.txt, tables.txt and four Parquet files.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
B=${B:-.dev-gpu/trainrep/llep-trace}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
L="$OUT/log.txt"
T="$OUT/tables.txt"
: > "$L"; : > "$T"
NG=$(nvidia-smi -L 2>/dev/null | wc -l)
t0=$(date +%s)
el() { echo $(( $(date +%s) - t0 )); }
small() {  # gpus act recompute tokens D I
  local g=$1 act=$2 rc=$3 t=$4 d=$5 i=$6
  echo "== small: gpus $g act $act recompute '$rc' tokens $t D $d I $i ($(el)s)" >> "$L"
  timeout 40 $B replay --pass train $rc --act $act --gpus $g --synthetic balanced,95:1,50:4 \
    --policy ep,llep --ratio 1.3,always --min-gemm 16 --experts 8 --top-k 2 \
    --hidden-size $d --intermediate-size $i --tokens-per-rank $t --samples 64 \
    --runs 3 --warmup 1 >> "$L" 2>&1 || echo "FAILED small $g $act '$rc' (rc $?)" >> "$L"
}
target() {  # name secs gpus args...
  local name=$1 secs=$2 g=$3; shift 3
  echo "== $name ($(el)s): replay --gpus $g --tokens-per-rank 32768 --synthetic balanced,30:4,50:4,80:4,95:4,95:1 --alpha 1.0 --min-gemm 1024 --pass train $*" | tee -a "$T" >> "$L"
  timeout $secs $B replay --gpus $g --tokens-per-rank 32768 \
    --synthetic balanced,30:4,50:4,80:4,95:4,95:1 --alpha 1.0 --min-gemm 1024 --pass train \
    "$@" --out "$OUT/$name.parquet" >> "$T" 2>> "$L" || echo "FAILED $name (rc $?)" | tee -a "$T" >> "$L"
}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; date -u; } >> "$L"
small 1 gpt-oss "" 512 256 128
small 1 swiglu --recompute 512 256 128
small 2 gpt-oss "" 1024 256 128
small 2 gpt-oss --recompute 1024 256 128
small 2 swiglu "" 1024 256 128
small 2 swiglu --recompute 1024 256 128
# one expert over two GEMM units (EP 95:1: ~38k rows on GPU 0)
small 2 gpt-oss "" 20000 128 64
[ "$NG" -ge 4 ] && small 4 gpt-oss "" 1024 256 128
echo "small runs done ($(el)s)" >> "$L"
# the command, as written (2 GPUs lent)
target train-2gpu 70 2 --ratio 1.3 --policy ep,llep --with-sim h200
target train-2gpu-always 40 2 --ratio always --policy llep --with-sim h200
[ "$(el)" -lt 110 ] && target train-2gpu-recompute 50 2 --ratio 1.3 --policy ep,llep --recompute
[ "$NG" -ge 4 ] && [ "$(el)" -lt 125 ] && target train-4gpu 45 4 --ratio 1.3 --policy ep,llep --with-sim h200
echo "total ($(el)s)" >> "$L"
grep -E "rel err forward|FAILED|^error|panicked" "$L" | awk '{print substr($0,1,200)}' | sort | uniq -c | sort -rn | head -30
echo "largest per-kind errors:"; grep -oE "(forward|dX|grads) [0-9.e-]+" "$L" | sort -k2 -g | tail -3
tail -3 "$L"
cut -c1-330 "$T" | grep -E "==|measured|FAILED" | head -60
