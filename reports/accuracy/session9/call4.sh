#!/bin/bash
# Session 9, call 4 (2 x H200): the final build (profile re-measured and re-stamped, embedded).
# 1 all GPU tests; 2 the README's decode example, graphs on and off, with --with-sim h200;
# 3 passes G8 (graphs) and E5 (one by one) of the matrix, 128-8,192 tok/GPU, ep/llep 1.3/auto: no choice saw them,
#   and llep-auto decides with the final profile's margins; 4 gemm-bench at the gpt-oss default (32 x 4,096).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/v4; B=$D/llep-trace
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
timeout 100 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
timeout 40 $D/gpu_gemm --test-threads 1 >> $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
grep -E "test result|rc=|panicked" $OUT/gpu-tests.txt
for g in on off; do
  timeout 60 $B replay --gpus 2 --synthetic balanced,30:4,95:1 --experts 128 --top-k 8 --hidden-size 2048 \
    --intermediate-size 768 --tokens-per-rank 512 --ratio 1.3 --cuda-graphs $g --with-sim h200 \
    --out $OUT/decode-graphs-$g.parquet > $OUT/decode-graphs-$g.txt 2>$OUT/decode-graphs-$g.err
  echo "decode example $g rc=$?" >> $OUT/matrix.log
done
M=/tmp/m; rm -rf $M; mkdir -p $M/g8 $M/e5
run() { # pass graphs name E k D I T
  timeout 90 $B replay -q --gpus 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --experts $4 --top-k $5 --hidden-size $6 --intermediate-size $7 --tokens-per-rank $8 \
    --samples 8 --runs 10 --warmup 3 --cuda-graphs $2 --out $M/$1/$3-$8.parquet > $M/$1/$3-$8.txt 2>&1 \
    || echo "FAILED $1 $3 $8: $(tail -2 $M/$1/$3-$8.txt)" >> $OUT/matrix.log
  echo "$1 $3 $8 $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
}
S=("gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "olmoe 64 8 2048 1024" "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336")
for t in 128 512 2048 8192; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 480 ] && break 2; run g8 on $shape $t; done; done
for t in 128 512 2048 8192; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 480 ] && break 2; run e5 off $shape $t; done; done
python3 - <<'PY' >> $OUT/matrix.log 2>&1
import glob, os, pyarrow as pa, pyarrow.parquet as pq
for p in ['g8', 'e5']:
    fs = sorted(glob.glob(f'/tmp/m/{p}/*.parquet'))
    if not fs: continue
    ts = [pq.read_table(f) for f in fs]
    t = pa.concat_tables(ts)
    pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ['OUT'] + f'/matrix-{p}.parquet')
    print(p, 'rows', t.num_rows)
PY
for p in g8 e5; do mkdir -p $OUT/logs/$p; cp $M/$p/*.txt $OUT/logs/$p/ 2>/dev/null; done
[ $(( $(date +%s) - t0 )) -lt 520 ] && CUDA_VISIBLE_DEVICES=0 timeout 60 $B gemm-bench -q --gemm lt --rows 4096 > $OUT/bench-gptoss.txt 2>&1
echo "total $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
grep -E "FAILED|rows|total|decode" $OUT/matrix.log
grep -h warning $M/*/*.txt | head -5
grep -E "^lt|batched" $OUT/bench-gptoss.txt
