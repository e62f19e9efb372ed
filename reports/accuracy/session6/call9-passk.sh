#!/bin/bash
# Session 6, call 9 (2 x H200): pass K of the matrix with the final build and
# its built-in profile, a second pass no fit saw: 128-32,768 tokens/GPU.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/passk; B=$D/llep-trace
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
M=/tmp/m; rm -rf $M; mkdir -p $M/k
run() { # pass name E k D I T
  timeout 90 $B replay -q --gpus 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --experts $3 --top-k $4 --hidden-size $5 --intermediate-size $6 --tokens-per-rank $7 \
    --samples 8 --runs 10 --warmup 3 --out $M/$1/$2-$7.parquet > $M/$1/$2-$7.txt 2>&1 \
    || echo "FAILED $1 $2 $7: $(tail -2 $M/$1/$2-$7.txt)" >> $OUT/matrix.log
  echo "$1 $2 $7 $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
}
S=("gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "olmoe 64 8 2048 1024" "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336")
for t in 128 512 2048 8192 32768; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 480 ] && break 2; run k $shape $t; done; done
python3 - <<'PY' >> $OUT/matrix.log 2>&1
import glob, os, pyarrow as pa, pyarrow.parquet as pq
fs = sorted(glob.glob('/tmp/m/k/*.parquet'))
ts = [pq.read_table(f) for f in fs]
t = pa.concat_tables(ts)
pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ['OUT'] + '/matrix-k.parquet')
print('k rows', t.num_rows)
PY
echo "total $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
grep -E "FAILED|rows|total" $OUT/matrix.log
