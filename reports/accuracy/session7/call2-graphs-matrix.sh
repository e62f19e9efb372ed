#!/bin/bash
# Session 7, call 2 (2 x H200): --cuda-graphs on/off, GPU tests, then the matrix at 128-8,192 tokens/GPU in both modes, repeated in fresh processes.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/graphs1; B=$D/llep-trace
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
timeout 120 $D/gpu_replay --test-threads 1 cuda_graphs overlap small_layer > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
grep -E "test result|rc=|panicked" $OUT/gpu-tests.txt
M=/tmp/m; rm -rf $M; mkdir -p $M/e $M/g $M/e2 $M/g2
run() { # pass graphs name E k D I T
  timeout 90 $B replay -q --gpus 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --experts $4 --top-k $5 --hidden-size $6 --intermediate-size $7 --tokens-per-rank $8 \
    --samples 8 --runs 10 --warmup 3 --cuda-graphs $2 --out $M/$1/$3-$8.parquet > $M/$1/$3-$8.txt 2>&1 \
    || echo "FAILED $1 $3 $8: $(tail -2 $M/$1/$3-$8.txt)" >> $OUT/matrix.log
  echo "$1 $3 $8 $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
}
S=("gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "olmoe 64 8 2048 1024" "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336")
for t in 128 512 2048 8192; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 330 ] && break 2; run e off $shape $t; run g on $shape $t; done; done
for t in 128 512 2048; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 500 ] && break 2; run e2 off $shape $t; run g2 on $shape $t; done; done
python3 - <<'PY' >> $OUT/matrix.log 2>&1
import glob, os, pyarrow as pa, pyarrow.parquet as pq
for p in ['e', 'g', 'e2', 'g2']:
    fs = sorted(glob.glob(f'/tmp/m/{p}/*.parquet'))
    if not fs: continue
    ts = [pq.read_table(f) for f in fs]
    t = pa.concat_tables(ts)
    pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ['OUT'] + f'/matrix-{p}.parquet')
    print(p, 'rows', t.num_rows)
PY
cp $M/g/*.txt $OUT/ 2>/dev/null; mkdir -p $OUT/logs; for p in e g e2 g2; do mkdir -p $OUT/logs/$p; cp $M/$p/*.txt $OUT/logs/$p/ 2>/dev/null; done
echo "total $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
grep -E "FAILED|rows|total" $OUT/matrix.log
grep -h warning $M/*/*.txt | head -5
