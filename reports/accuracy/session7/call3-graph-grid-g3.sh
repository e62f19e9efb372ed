#!/bin/bash
# Session 7, call 3 (2 x H200): the GEMM grid timed as CUDA graphs (GPU 0) beside the GEMM tests (GPU 1);
# the graph and replay GPU tests; then pass G3 of the matrix with --cuda-graphs on (128-8,192 tokens/GPU, 32,768 for three shapes).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/graphs2; B=$D/llep-trace
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
CUDA_VISIBLE_DEVICES=0 timeout 200 $B calibrate --gpus 1 --gemm-only --gemm lt --cuda-graphs on --base h200 \
  --grid-shapes 2880:2880,4096:14336,2048:768,7168:2048,2048:1024,1024:512,1024:2048,4096:512,4096:2048,8192:512,8192:2048 \
  --out $OUT/gemm-lt-graphs.json > $OUT/gemm-lt-graphs.txt 2>&1 &
CAL=$!
CUDA_VISIBLE_DEVICES=1 timeout 150 $D/gpu_gemm --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
wait $CAL; echo "calibrate graphs rc=$? $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
timeout 150 $D/gpu_replay --test-threads 1 cuda_graphs overlap small_layer in_turns >> $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
grep -E "test result|rc=|panicked" $OUT/gpu-tests.txt
M=/tmp/m; rm -rf $M; mkdir -p $M/g3
run() { # pass graphs name E k D I T
  timeout 90 $B replay -q --gpus 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --experts $4 --top-k $5 --hidden-size $6 --intermediate-size $7 --tokens-per-rank $8 \
    --samples 8 --runs 10 --warmup 3 --cuda-graphs $2 --out $M/$1/$3-$8.parquet > $M/$1/$3-$8.txt 2>&1 \
    || echo "FAILED $1 $3 $8: $(tail -2 $M/$1/$3-$8.txt)" >> $OUT/matrix.log
  echo "$1 $3 $8 $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
}
S=("gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "olmoe 64 8 2048 1024" "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336")
for t in 128 512 2048 8192; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 420 ] && break 2; run g3 on $shape $t; done; done
for shape in "${S[@]:0:3}"; do [ $(( $(date +%s) - t0 )) -gt 480 ] && break; run g3 on $shape 32768; done
python3 - <<'PY' >> $OUT/matrix.log 2>&1
import glob, os, pyarrow as pa, pyarrow.parquet as pq
for p in ['g3']:
    fs = sorted(glob.glob(f'/tmp/m/{p}/*.parquet'))
    if not fs: continue
    ts = [pq.read_table(f) for f in fs]
    t = pa.concat_tables(ts)
    pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ['OUT'] + f'/matrix-{p}.parquet')
    print(p, 'rows', t.num_rows)
PY
mkdir -p $OUT/logs/g3; cp $M/g3/*.txt $OUT/logs/g3/ 2>/dev/null
echo "total $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
grep -E "FAILED|rows|total|calibrate" $OUT/matrix.log
grep -h warning $M/*/*.txt | head -5
tail -30 $OUT/gemm-lt-graphs.txt
