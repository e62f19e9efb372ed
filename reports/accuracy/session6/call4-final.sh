#!/bin/bash
# Session 6, call 4 (2 x H200): the final build. GPU tests; gemm-bench at
# decode sizes (the small-rows buffer fix); pass J of the matrix with the
# shipped profile (embedded: GEMM tables through cuBLASLt, the host's floor,
# the re-fit), none of it fitted on: 128-2,048 tokens/GPU for all five
# shapes, then 8,192 and 32,768 while time allows.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/final6; B=$D/llep-trace
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
timeout 170 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
timeout 60 $D/gpu_gemm --test-threads 1 >> $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
echo "tests $(( $(date +%s) - t0 ))s"
timeout 60 $B gemm-bench -q --shape 2048:768 --rows 1,8,16,32 --layer-experts 64 --layer-rows 16 --reps 10 > $OUT/bench-qwen3-decode.txt 2>&1; echo "gemm-bench rc=$?"
M=/tmp/m; rm -rf $M; mkdir -p $M/j
run() { # pass name E k D I T
  timeout 90 $B replay -q --gpus 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --experts $3 --top-k $4 --hidden-size $5 --intermediate-size $6 --tokens-per-rank $7 \
    --samples 8 --runs 10 --warmup 3 --out $M/$1/$2-$7.parquet > $M/$1/$2-$7.txt 2>&1 \
    || echo "FAILED $1 $2 $7: $(tail -2 $M/$1/$2-$7.txt)" >> $OUT/matrix.log
  echo "$1 $2 $7 $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
}
S=("gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "olmoe 64 8 2048 1024" "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336")
for t in 128 512 2048 8192 32768; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 480 ] && break 2; run j $shape $t; done; done
python3 - <<'PY' >> $OUT/matrix.log 2>&1
import glob, os, pyarrow as pa, pyarrow.parquet as pq
fs = sorted(glob.glob('/tmp/m/j/*.parquet'))
ts = [pq.read_table(f) for f in fs]
t = pa.concat_tables(ts)
pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ['OUT'] + '/matrix-j.parquet')
print('j rows', t.num_rows)
PY
echo "total $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
grep -E "test result|rc=|FAILED|panicked" $OUT/gpu-tests.txt; grep -E "FAILED|rows|total" $OUT/matrix.log
