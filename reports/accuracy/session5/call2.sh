#!/bin/bash
# Session 5, call 2 (2 x H200): the per-projection GEMM grid re-measured
# through the path replay runs by default (cuBLASLt, autotuned) on GPU 0;
# then issue 12's matrix again in new processes: pass B (in turns, as A),
# 128-8192 tokens/GPU plus 32768 for three shapes; pass C (back to back,
# --interleave off) at 128 and 512 tokens, to see what taking turns does
# to the noise between settings that run the same plan.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
D=.dev-gpu/lead8; B=$D/llep-trace
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
CUDA_VISIBLE_DEVICES=0 timeout 260 $B calibrate --gpus 1 --gemm-only --gemm lt --base h200 \
  --grid-shapes 2880:2880,4096:14336,2048:768,7168:2048,2048:1024,1024:512,1024:2048,4096:512,4096:2048,8192:512,8192:2048 \
  --out $OUT/gemm-lt.json > $OUT/gemm-lt.txt 2>&1; echo "gemm-only rc=$? $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
M=/tmp/m; rm -rf $M; mkdir -p $M/b $M/c
run() { # pass interleave name E k D I T
  timeout 60 $B replay -q --gpus 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --experts $4 --top-k $5 --hidden-size $6 --intermediate-size $7 --tokens-per-rank $8 --samples 8 \
    --runs 10 --warmup 3 --interleave $2 --out $M/$1/$3-$8.parquet > $M/$1/$3-$8.txt 2>&1 \
    || echo "FAILED $1 $3 $8: $(tail -2 $M/$1/$3-$8.txt)" >> $OUT/matrix.log
  echo "$1 $3 $8 $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
}
S=("gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "olmoe 64 8 2048 1024" "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336")
for t in 128 512 2048 8192; do for shape in "${S[@]}"; do
  [ $(( $(date +%s) - t0 )) -gt 470 ] && break 2; run b on $shape $t; done; done
for shape in "${S[@]:0:3}"; do [ $(( $(date +%s) - t0 )) -gt 470 ] && break; run b on $shape 32768; done
for t in 128 512; do for shape in "${S[@]}"; do
  [ $(( $(date +%s) - t0 )) -gt 520 ] && break 2; run c off $shape $t; done; done
python3 - <<'PY' >> $OUT/matrix.log 2>&1
import glob, os, pyarrow as pa, pyarrow.parquet as pq
for d in ['b', 'c']:
    fs = sorted(glob.glob(f'/tmp/m/{d}/*.parquet'))
    if not fs: continue
    ts = [pq.read_table(f) for f in fs]
    t = pa.concat_tables(ts)
    pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ['OUT'] + f'/matrix-{d}.parquet')
    print(d, 'rows', t.num_rows)
PY
echo "total $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
tail -4 $OUT/gemm-lt.txt; grep -c . $OUT/matrix.log; grep -E "FAILED|rows|rc=|total" $OUT/matrix.log
