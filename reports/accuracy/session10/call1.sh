#!/bin/bash
# Session 10, call 1 (2 x H200): session 9's review mends and this session's build.
# 1 all GPU tests (new build: combine_rows over tokens x row slices with 16-byte loads; llep-auto decides once
#   on the previous layer's counts while the GPU routes, to warm its caches);
# 2 A/B, old build (8428e67) against new, in turns: Qwen3 decode (512 tok/GPU, eager), DeepSeek-V3 at 128 tok/GPU
#   (eager), gpt-oss at 32,768 tok/GPU (pipelined, NCCL);
# 3 pass G9 (graphs) of the matrix with the new build, 128-8,192 tok/GPU, as time allows.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/w1; B=$D/llep-trace; OLD=$D/llep-trace-old
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
timeout 120 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
timeout 40 $D/gpu_gemm --test-threads 1 >> $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
grep -E "test result|rc=|panicked" $OUT/gpu-tests.txt
grep -q "gpu_replay rc=0" $OUT/gpu-tests.txt || { echo "tests failed: stopping"; exit 1; }
ab() { # name binary args...
  local n=$1 b=$2; shift 2
  timeout 80 $b replay -q --gpus 2 --samples 8 --runs 10 --warmup 3 "$@" --out $OUT/ab-$n.parquet > $OUT/ab-$n.txt 2>&1 \
    || echo "FAILED $n: $(tail -2 $OUT/ab-$n.txt)"
  echo "ab $n $(( $(date +%s) - t0 ))s"
}
Q="--synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto --experts 128 --top-k 8 --hidden-size 2048 --intermediate-size 768 --tokens-per-rank 512"
K="--synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto --experts 256 --top-k 8 --hidden-size 7168 --intermediate-size 2048 --tokens-per-rank 128"
G="--synthetic balanced,95:1 --policy ep,llep --ratio 1.3 --tokens-per-rank 32768"
for i in 1 2; do ab qwen3-old-$i $OLD $Q; ab qwen3-new-$i $B $Q; done
ab dsv3-old $OLD $K; ab dsv3-new $B $K
ab gptoss-old $OLD $G; ab gptoss-new $B $G
M=/tmp/m; rm -rf $M; mkdir -p $M/g9
run() { # pass graphs name E k D I T
  timeout 90 $B replay -q --gpus 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --experts $4 --top-k $5 --hidden-size $6 --intermediate-size $7 --tokens-per-rank $8 \
    --samples 8 --runs 10 --warmup 3 --cuda-graphs $2 --out $M/$1/$3-$8.parquet > $M/$1/$3-$8.txt 2>&1 \
    || echo "FAILED $1 $3 $8: $(tail -2 $M/$1/$3-$8.txt)"
  echo "$1 $3 $8 $(( $(date +%s) - t0 ))s"
}
S=("gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "olmoe 64 8 2048 1024" "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336")
for t in 128 512 2048 8192; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 500 ] && break 2; run g9 on $shape $t; done; done
python3 - <<'PY'
import glob, os, pyarrow as pa, pyarrow.parquet as pq
for p in ['g9']:
    fs = sorted(glob.glob(f'/tmp/m/{p}/*.parquet'))
    if not fs: continue
    ts = [pq.read_table(f) for f in fs]
    t = pa.concat_tables(ts)
    pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ['OUT'] + f'/matrix-{p}.parquet')
    print(p, 'rows', t.num_rows)
PY
mkdir -p $OUT/logs; cp $M/g9/*.txt $OUT/logs/ 2>/dev/null
python3 - <<'PY'
import glob, os, pandas as pd
O = os.environ['OUT']
for f in sorted(glob.glob(O + '/ab-*.parquet')):
    t = pd.read_parquet(f); n = os.path.basename(f)[3:-8]
    t['pol'] = t.policy + t['lambda'].fillna(0).map(lambda x: '' if x == 0 else f'{x:g}')
    print(n, ' '.join(f"{r.scenario}/{r.policy}:{r.t_total_ms:.3f}(c{r.t_combine_ms:.3f},o{r.t_overhead_ms:.3f})" for r in t.itertuples()))
PY
echo "total $(( $(date +%s) - t0 ))s"
