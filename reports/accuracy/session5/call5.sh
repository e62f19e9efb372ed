#!/bin/bash
# Session 5, call 5 (2 x H200): GPU tests of main after the simulate speed work merged; issue 12 matrix at 128-2048
# tokens/GPU, in turns with the ranks lined up (as pass F), twice in new
# processes (passes H and H2): llep-auto with the faster cost model.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
D=.dev-gpu/lead11; B=$D/llep-trace
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
timeout 150 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
timeout 60 $D/gpu_gemm --test-threads 1 >> $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
M=/tmp/m; rm -rf $M; mkdir -p $M/h $M/h2
run() { # pass interleave name E k D I T
  timeout 60 $B replay -q --gpus 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --experts $4 --top-k $5 --hidden-size $6 --intermediate-size $7 --tokens-per-rank $8 --samples 8 \
    --runs 10 --warmup 3 --interleave $2 --out $M/$1/$3-$8.parquet > $M/$1/$3-$8.txt 2>&1 \
    || echo "FAILED $1 $3 $8: $(tail -2 $M/$1/$3-$8.txt)" >> $OUT/matrix.log
  echo "$1 $3 $8 $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
}
S=("gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "olmoe 64 8 2048 1024" "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336")
for t in 128 512 2048; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 400 ] && break 2; run h on $shape $t; done; done
for t in 128 512 2048; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 480 ] && break 2; run h2 on $shape $t; done; done
python3 - <<'PY' >> $OUT/matrix.log 2>&1
import glob, os, pyarrow as pa, pyarrow.parquet as pq
for d in ['h', 'h2']:
    fs = sorted(glob.glob(f'/tmp/m/{d}/*.parquet'))
    if not fs: continue
    ts = [pq.read_table(f) for f in fs]
    t = pa.concat_tables(ts)
    pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ['OUT'] + f'/matrix-{d}.parquet')
    print(d, 'rows', t.num_rows)
PY
cp $M/h/gptoss-512.txt $OUT/example-turns.txt 2>/dev/null
echo "total $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
grep -E "test result|rc=|FAILED|panicked" $OUT/gpu-tests.txt; grep -E "FAILED|rows|total" $OUT/matrix.log
