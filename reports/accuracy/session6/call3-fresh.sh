#!/bin/bash
# Session 6 (2 x H200): fresh matrix rows, none fitted on, to score the profile's
# candidate fit (cuBLASLt GEMM tables + the host's floor per unit, layer_fit
# re-fitted on session 5's calibration-shape rows): pass I at 128-32,768
# tokens/GPU, pass I2 at 128-2,048 again in new processes. llep-auto decides
# with the candidate profile (fitB.json).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/fresh6; B=$D/llep-trace
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
M=/tmp/m; rm -rf $M; mkdir -p $M/i $M/i2
run() { # pass name E k D I T
  timeout 90 $B replay -q --gpus 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --profile $D/fitB.json --experts $3 --top-k $4 --hidden-size $5 --intermediate-size $6 --tokens-per-rank $7 \
    --samples 8 --runs 10 --warmup 3 --out $M/$1/$2-$7.parquet > $M/$1/$2-$7.txt 2>&1 \
    || echo "FAILED $1 $2 $7: $(tail -2 $M/$1/$2-$7.txt)" >> $OUT/matrix.log
  echo "$1 $2 $7 $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
}
S=("gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "olmoe 64 8 2048 1024" "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336")
for t in 128 512 2048 8192 32768; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 400 ] && break 2; run i $shape $t; done; done
for t in 128 512 2048; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 520 ] && break 2; run i2 $shape $t; done; done
python3 - <<'PY' >> $OUT/matrix.log 2>&1
import glob, os, pyarrow as pa, pyarrow.parquet as pq
for d in ['i', 'i2']:
    fs = sorted(glob.glob(f'/tmp/m/{d}/*.parquet'))
    if not fs: continue
    ts = [pq.read_table(f) for f in fs]
    t = pa.concat_tables(ts)
    pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ['OUT'] + f'/matrix-{d}.parquet')
    print(d, 'rows', t.num_rows)
PY
echo "total $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
grep -E "FAILED|rows|total" $OUT/matrix.log
