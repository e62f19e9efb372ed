#!/bin/bash
# Session 10, call 4 (2 x H200): this session's replay build (combine over tokens x row slices, no warm-up,
# LLEP_TRACE_HOST_TIMING), profile unchanged. 1 all GPU tests; 2 passes G10 (graphs) and E7 (one by one),
# 128-8,192 tok/GPU, the rows layer_fit is re-fitted on (calibration shapes only) and the profile re-stamped
# with; 3 issue 15's gpt-oss layer at 32,768 tok/GPU, NCCL and copy engines, pipelined, 1 and 2 compute streams.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/w4; B=$D/llep-trace
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
timeout 120 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
timeout 40 $D/gpu_gemm --test-threads 1 >> $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
grep -E "test result|rc=|panicked" $OUT/gpu-tests.txt
M=/tmp/m; rm -rf $M; mkdir -p $M/g10 $M/e7
run() { # pass graphs name E k D I T
  timeout 90 $B replay -q --gpus 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --experts $4 --top-k $5 --hidden-size $6 --intermediate-size $7 --tokens-per-rank $8 \
    --samples 8 --runs 10 --warmup 3 --cuda-graphs $2 --out $M/$1/$3-$8.parquet > $M/$1/$3-$8.txt 2>&1 \
    || echo "FAILED $1 $3 $8: $(tail -2 $M/$1/$3-$8.txt)"
  echo "$1 $3 $8 $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
}
S=("gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "olmoe 64 8 2048 1024" "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336")
for t in 128 512 2048 8192; do for shape in "${S[@]}"; do run g10 on $shape $t; done; done
for t in 128 512 2048 8192; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 420 ] && break 2; run e7 off $shape $t; done; done
python3 - <<'PY'
import glob, os, pyarrow as pa, pyarrow.parquet as pq
for p in ['g10', 'e7']:
    fs = sorted(glob.glob(f'/tmp/m/{p}/*.parquet'))
    if not fs: continue
    ts = [pq.read_table(f) for f in fs]
    t = pa.concat_tables(ts)
    pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ['OUT'] + f'/matrix-{p}.parquet')
    print(p, 'rows', t.num_rows)
PY
for p in g10 e7; do mkdir -p $OUT/logs/$p; cp $M/$p/*.txt $OUT/logs/$p/ 2>/dev/null; done
for x in nccl copy-engine; do for s in 1 2; do
  [ $(( $(date +%s) - t0 )) -gt 540 ] && break 2
  timeout 60 $B replay -q --gpus 2 --tokens-per-rank 32768 --synthetic balanced,30:4,50:4,80:4,95:4,95:1 --policy ep,llep --ratio 1.3 \
    --exchange $x --compute-streams $s --samples 8 --runs 10 --warmup 3 \
    --out $OUT/gptoss-${x%%-*}-s$s.parquet > $OUT/gptoss-${x%%-*}-s$s.txt 2>&1 || echo "FAILED gptoss $x $s"
done; done
python3 - <<'PY'
import glob, os, pandas as pd
O = os.environ['OUT']
for f in sorted(glob.glob(O + '/gptoss-*.parquet')):
    t = pd.read_parquet(f); n = os.path.basename(f)[:-8]
    print(f"{n:12s}", ' '.join(f"{r.scenario}/{r.policy[:4]}:{r.t_total_ms:.2f}" for r in t.itertuples()))
PY
echo "total $(( $(date +%s) - t0 ))s"
