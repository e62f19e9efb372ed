#!/bin/bash
# Session 5, call 1 (2 x H200): GPU tests (interleaved timing, weight-peer
# columns); a small 2-GPU calibrate (the weight communicator's receive and
# send growth apart); issue 12's matrix pass A: 5 shapes x 128-8192
# tokens/GPU x balanced/30:4/95:1 x EP / LLEP 1.3 / llep-auto, in turns.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
D=.dev-gpu/lead7; B=$D/llep-trace
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
timeout 150 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
timeout 60 $D/gpu_gemm --test-threads 1 >> $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
timeout 90 $B calibrate --gpus 2 --out $OUT/cal-2gpu.json --shapes 2880:2880 --tokens 256,4096 --grid-shapes "" --reps 3 > $OUT/calibrate.txt 2>&1; echo "calibrate rc=$?" >> $OUT/gpu-tests.txt
echo "tests+calibrate $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
M=/tmp/m; rm -rf $M; mkdir -p $M
run() { # name E k D I T
  timeout 40 $B replay -q --gpus 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --experts $2 --top-k $3 --hidden-size $4 --intermediate-size $5 --tokens-per-rank $6 --samples 8 \
    --runs 10 --warmup 3 --out $M/$1-$6.parquet > $M/$1-$6.txt 2>&1 \
    || echo "FAILED $1 $6: $(tail -2 $M/$1-$6.txt)" >> $OUT/matrix.log
  echo "$1 $6 $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
}
for t in 128 512 2048 8192; do
  for shape in "gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "olmoe 64 8 2048 1024" \
               "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336"; do
    [ $(( $(date +%s) - t0 )) -gt 520 ] && break 2
    run $shape $t
  done
done
python3 - <<'PY' >> $OUT/matrix.log 2>&1
import glob, os, pyarrow as pa, pyarrow.parquet as pq
fs = sorted(glob.glob('/tmp/m/*.parquet'))
ts = [pq.read_table(f) for f in fs]
t = pa.concat_tables(ts)
pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ['OUT'] + '/matrix-a.parquet')
print('rows', t.num_rows)
PY
cat $M/gptoss-512.txt > $OUT/example.txt 2>/dev/null
echo "total $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
grep -E "test result|rc=|FAILED|panicked" $OUT/gpu-tests.txt; tail -3 $OUT/calibrate.txt; tail -6 $OUT/matrix.log
