#!/bin/bash
# Session 9, call 3 (2 x H200), call 2's build: pass E4 (units issued eagerly) and G7 (graphs) of the matrix,
# 128-8,192 tok/GPU, then 32,768 for every shape in both modes; ep/llep 1.3/auto (old tables decide auto).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/v2; B=$D/llep-trace
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
M=/tmp/m; rm -rf $M; mkdir -p $M/e4 $M/g7 $M/e4big $M/g7big
run() { # pass graphs name E k D I T
  timeout 90 $B replay -q --gpus 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --experts $4 --top-k $5 --hidden-size $6 --intermediate-size $7 --tokens-per-rank $8 \
    --samples 8 --runs 10 --warmup 3 --cuda-graphs $2 --out $M/$1/$3-$8.parquet > $M/$1/$3-$8.txt 2>&1 \
    || echo "FAILED $1 $3 $8: $(tail -2 $M/$1/$3-$8.txt)" >> $OUT/matrix.log
  echo "$1 $3 $8 $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
}
S=("gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "olmoe 64 8 2048 1024" "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336")
for t in 128 512 2048 8192; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 500 ] && break 2; run e4 off $shape $t; done; done
for t in 128 512 2048 8192; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 500 ] && break 2; run g7 on $shape $t; done; done
for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 500 ] && break; run g7big on $shape 32768; run e4big off $shape 32768; done
python3 - <<'PY' >> $OUT/matrix.log 2>&1
import glob, os, pyarrow as pa, pyarrow.parquet as pq
for p in ['e4', 'g7', 'e4big', 'g7big']:
    fs = sorted(glob.glob(f'/tmp/m/{p}/*.parquet'))
    if not fs: continue
    ts = [pq.read_table(f) for f in fs]
    t = pa.concat_tables(ts)
    pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ['OUT'] + f'/matrix-{p}.parquet')
    print(p, 'rows', t.num_rows)
PY
for p in e4 g7 e4big g7big; do mkdir -p $OUT/logs/$p; cp $M/$p/*.txt $OUT/logs/$p/ 2>/dev/null; done
echo "total $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
grep -E "FAILED|rows|total" $OUT/matrix.log
grep -h warning $M/*/*.txt | head -5
