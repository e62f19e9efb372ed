#!/bin/bash
# Session 6 diagnostic: does a decode-size layer's compute vary from process to process, and why
D=.dev-gpu/diag1; B=$D/llep-trace
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; lscpu | grep -E "Model name|^CPU\(s\)|NUMA"; nvidia-smi topo -m; } > $OUT/machine.txt 2>&1
one() { # tag gemm E k D I T
  LLEP_TRACE_TUNE_LOG=1 timeout 40 $B replay -q --gpus 2 --synthetic balanced --policy ep --gemm $2 \
    --experts $3 --top-k $4 --hidden-size $5 --intermediate-size $6 --tokens-per-rank $7 --samples 8 \
    --runs 10 --warmup 3 --out $OUT/$1.parquet > $OUT/$1.txt 2> $OUT/$1.err
  echo "$1 rc=$? $(( $(date +%s) - t0 ))s"
}
for i in 1 2 3 4 5 6; do one qwen3-512-lt-$i lt 128 8 2048 768 512; done
for i in 1 2 3; do one olmoe-128-lt-$i lt 64 8 2048 1024 128; done
for i in 1 2 3; do one gptoss-128-lt-$i lt 128 4 2880 2880 128; done
for i in 1 2 3; do one qwen3-512-cublas-$i cublas 128 8 2048 768 512; done
timeout 60 $B gemm-bench -q --shape 2048:768 --rows 1,8,16,32 --layer-experts 64 --layer-rows 16 --reps 10 > $OUT/bench-qwen3.txt 2>&1
timeout 60 $B gemm-bench -q --shape 2048:1024 --rows 16 --layer-experts 32 --layer-rows 32 --reps 10 > $OUT/bench-olmoe.txt 2>&1
echo "total $(( $(date +%s) - t0 ))s"
python3 - <<'PY'
import glob, os, pyarrow.parquet as pq
for f in sorted(glob.glob(os.environ['OUT']+'/*.parquet')):
    t=pq.read_table(f).to_pandas()
    print(os.path.basename(f), ' '.join('%.3f'%x for x in t.t_compute_ms), 'tot', ' '.join('%.3f'%x for x in t.t_total_ms))
PY
