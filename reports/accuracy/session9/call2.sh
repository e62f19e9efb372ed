#!/bin/bash
# Session 9, call 2 (2 x H200): units batched under one activation launch (src/gpu/units.rs).
# 1 the GEMM grid as calibrate now times it (batched like replay): eager on GPU 0, as graphs on GPU 1,
# same 11 shapes as session 7; 2 all GPU tests; 3 pass G6 of the matrix (graphs, 128-8,192 tok/GPU,
# 5 shapes, ep/llep 1.3/auto; llep-auto still decides with the old tables).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/v2; B=$D/llep-trace
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
G=2880:2880,4096:14336,2048:768,7168:2048,2048:1024,1024:512,1024:2048,4096:512,4096:2048,8192:512,8192:2048
CUDA_VISIBLE_DEVICES=0 timeout 150 $B calibrate --gpus 1 --gemm-only --gemm lt --base h200 --grid-shapes $G \
  --out $OUT/gemm-lt.json > $OUT/gemm-lt.txt 2>&1 &
C1=$!
CUDA_VISIBLE_DEVICES=1 timeout 150 $B calibrate --gpus 1 --gemm-only --gemm lt --cuda-graphs on --base h200 --grid-shapes $G \
  --out $OUT/gemm-lt-graphs.json > $OUT/gemm-lt-graphs.txt 2>&1 &
C2=$!
wait $C1; echo "grid eager rc=$? $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
wait $C2; echo "grid graphs rc=$? $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
timeout 100 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
timeout 40 $D/gpu_gemm --test-threads 1 >> $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
echo "tests $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
grep -E "test result|rc=|panicked" $OUT/gpu-tests.txt
M=/tmp/m; rm -rf $M; mkdir -p $M/g6
run() { # pass graphs name E k D I T
  timeout 90 $B replay -q --gpus 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --experts $4 --top-k $5 --hidden-size $6 --intermediate-size $7 --tokens-per-rank $8 \
    --samples 8 --runs 10 --warmup 3 --cuda-graphs $2 --out $M/$1/$3-$8.parquet > $M/$1/$3-$8.txt 2>&1 \
    || echo "FAILED $1 $3 $8: $(tail -2 $M/$1/$3-$8.txt)" >> $OUT/matrix.log
  echo "$1 $3 $8 $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
}
S=("gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "olmoe 64 8 2048 1024" "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336")
for t in 128 512 2048 8192; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 540 ] && break 2; run g6 on $shape $t; done; done
python3 - <<'PY' >> $OUT/matrix.log 2>&1
import glob, os, pyarrow as pa, pyarrow.parquet as pq
for p in ['g6']:
    fs = sorted(glob.glob(f'/tmp/m/{p}/*.parquet'))
    if not fs: continue
    ts = [pq.read_table(f) for f in fs]
    t = pa.concat_tables(ts)
    pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ['OUT'] + f'/matrix-{p}.parquet')
    print(p, 'rows', t.num_rows)
PY
mkdir -p $OUT/logs/g6; cp $M/g6/*.txt $OUT/logs/g6/ 2>/dev/null
echo "total $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
grep -E "FAILED|rows|total|grid|tests" $OUT/matrix.log
grep -h warning $M/*/*.txt | head -5
tail -5 $OUT/gemm-lt.txt
