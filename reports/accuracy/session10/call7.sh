#!/bin/bash
# Session 10, call 7 (2 x H200): does a llep-auto run that chose EP pay for following an LLEP run that moved
# weights? Settings now take turns in an order shuffled each round (new) against the fixed order (call 6's
# build) and --interleave off; Mixtral-8x7B and DeepSeek-V3 at 128 tok/GPU, graphs. Then the GPU tests of
# gpu_replay and pass G13 (graphs) with the shuffled turns.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/w7; B=$D/llep-trace; F=$D/llep-trace-fixed
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
MX="--synthetic 30:4,95:1 --experts 8 --top-k 2 --hidden-size 4096 --intermediate-size 14336 --tokens-per-rank 128"
DS="--synthetic 30:4,95:1 --experts 256 --top-k 8 --hidden-size 7168 --intermediate-size 2048 --tokens-per-rank 128"
one() { # name binary extra...
  local n=$1 b=$2; shift 2
  LLEP_TRACE_HOST_TIMING=1 timeout 60 $b replay -q --gpus 2 --policy ep,llep --ratio 1.3,auto --samples 8 --runs 10 --warmup 3 \
    --cuda-graphs on "$@" --out $OUT/$n.parquet > $OUT/$n.txt 2>&1 || echo "FAILED $n"
}
for i in 1 2; do
  one mx-fixed-$i $F $MX; one mx-shuf-$i $B $MX; one mx-off-$i $B $MX --interleave off
  one ds-fixed-$i $F $DS; one ds-shuf-$i $B $DS; one ds-off-$i $B $DS --interleave off
done
python3 - <<'PY'
import glob, os, pandas as pd
O = os.environ['OUT']
for f in sorted(glob.glob(O + '/m*.parquet') + glob.glob(O + '/d*.parquet')):
    t = pd.read_parquet(f); n = os.path.basename(f)[:-8]
    print(f"{n:11s}", ' '.join(f"{r.scenario}/{r.policy[:6]}:{r.t_total_ms:.3f}(o{r.t_overhead_ms*1e3:.0f})" for r in t.itertuples()))
PY
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
timeout 120 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
grep -E "test result|rc=|panicked" $OUT/gpu-tests.txt
M=/tmp/m; rm -rf $M; mkdir -p $M/g13
run() { # pass graphs name E k D I T
  timeout 90 $B replay -q --gpus 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --experts $4 --top-k $5 --hidden-size $6 --intermediate-size $7 --tokens-per-rank $8 \
    --samples 8 --runs 10 --warmup 3 --cuda-graphs $2 --out $M/$1/$3-$8.parquet > $M/$1/$3-$8.txt 2>&1 \
    || echo "FAILED $1 $3 $8: $(tail -2 $M/$1/$3-$8.txt)"
  echo "$1 $3 $8 $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
}
S=("gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "olmoe 64 8 2048 1024" "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336")
for t in 128 512 2048 8192; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 330 ] && break 2; run g13 on $shape $t; done; done
python3 - <<'PY'
import glob, os, pyarrow as pa, pyarrow.parquet as pq
for p in ['g13']:
    fs = sorted(glob.glob(f'/tmp/m/{p}/*.parquet'))
    if not fs: continue
    ts = [pq.read_table(f) for f in fs]
    t = pa.concat_tables(ts)
    pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ['OUT'] + f'/matrix-{p}.parquet')
    print(p, 'rows', t.num_rows)
PY
mkdir -p $OUT/logs/g13; cp $M/g13/*.txt $OUT/logs/g13/ 2>/dev/null
echo "total $(( $(date +%s) - t0 ))s"
