#!/bin/bash
# Session 10, call 8 (2 x H200): the final build. llep-auto's decision prices time only and reuses the pipelined
# schedule's buffers (locally 24% faster at 2,048 tok/GPU). 1 host checkpoints, call 7's build against this one,
# Qwen3 at 2,048 tok/GPU (pipelined) and Mixtral at 128, graphs; 2 the GPU tests of gpu_replay; 3 pass G14 (graphs).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/w8; B=$D/llep-trace; P=$D/llep-trace-w7
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
QW="--synthetic 30:4,95:1 --experts 128 --top-k 8 --hidden-size 2048 --intermediate-size 768 --tokens-per-rank 2048"
MX="--synthetic 30:4,95:1 --experts 8 --top-k 2 --hidden-size 4096 --intermediate-size 14336 --tokens-per-rank 128"
one() { # name binary extra...
  local n=$1 b=$2; shift 2
  LLEP_TRACE_HOST_TIMING=1 timeout 60 $b replay -q --gpus 2 --policy ep,llep --ratio 1.3,auto --samples 8 --runs 10 --warmup 3 \
    --cuda-graphs on "$@" --out $OUT/$n.parquet > $OUT/$n.txt 2>&1 || echo "FAILED $n"
}
for i in 1 2; do one qw-w7-$i $P $QW; one qw-new-$i $B $QW; one mx-w7-$i $P $MX; one mx-new-$i $B $MX; done
python3 - <<'PY'
import glob, os, pandas as pd
O = os.environ['OUT']
for f in sorted(glob.glob(O + '/qw*.parquet') + glob.glob(O + '/mx*.parquet')):
    t = pd.read_parquet(f); n = os.path.basename(f)[:-8]
    print(f"{n:9s}", ' '.join(f"{r.scenario}/{r.policy[:6]}:{r.t_total_ms:.3f}(o{r.t_overhead_ms*1e3:.0f})" for r in t.itertuples()))
PY
grep -h "llep-auto" $OUT/qw-*.txt
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
timeout 120 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
grep -E "test result|rc=|panicked" $OUT/gpu-tests.txt
M=/tmp/m; rm -rf $M; mkdir -p $M/g14
run() { # pass graphs name E k D I T
  timeout 90 $B replay -q --gpus 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --experts $4 --top-k $5 --hidden-size $6 --intermediate-size $7 --tokens-per-rank $8 \
    --samples 8 --runs 10 --warmup 3 --cuda-graphs $2 --out $M/$1/$3-$8.parquet > $M/$1/$3-$8.txt 2>&1 \
    || echo "FAILED $1 $3 $8: $(tail -2 $M/$1/$3-$8.txt)"
  echo "$1 $3 $8 $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
}
S=("gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "olmoe 64 8 2048 1024" "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336")
for t in 128 512 2048 8192; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 300 ] && break 2; run g14 on $shape $t; done; done
python3 - <<'PY'
import glob, os, pyarrow as pa, pyarrow.parquet as pq
for p in ['g14']:
    fs = sorted(glob.glob(f'/tmp/m/{p}/*.parquet'))
    if not fs: continue
    ts = [pq.read_table(f) for f in fs]
    t = pa.concat_tables(ts)
    pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ['OUT'] + f'/matrix-{p}.parquet')
    print(p, 'rows', t.num_rows)
PY
mkdir -p $OUT/logs/g14; cp $M/g14/*.txt $OUT/logs/g14/ 2>/dev/null
echo "total $(( $(date +%s) - t0 ))s"
