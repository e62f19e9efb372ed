#!/bin/bash
# Session 10, call 2 (2 x H200): where llep-auto's extra overhead goes (LLEP_TRACE_HOST_TIMING: rank 0's host
# checkpoints per run), Qwen3 at 512 and DeepSeek-V3 at 128 tok/GPU, eager, two processes each; then pass E6
# (issued one by one) of the matrix with this session's build, 128-8,192 tok/GPU.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/w2; B=$D/llep-trace
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc; } > $OUT/smi.txt
Q="--synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto --experts 128 --top-k 8 --hidden-size 2048 --intermediate-size 768 --tokens-per-rank 512"
K="--synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto --experts 256 --top-k 8 --hidden-size 7168 --intermediate-size 2048 --tokens-per-rank 128"
for i in 1 2; do
  LLEP_TRACE_HOST_TIMING=1 timeout 60 $B replay -q --gpus 2 --samples 8 --runs 10 --warmup 3 $Q --out $OUT/host-qwen3-$i.parquet > $OUT/host-qwen3-$i.txt 2>&1
  LLEP_TRACE_HOST_TIMING=1 timeout 60 $B replay -q --gpus 2 --samples 8 --runs 10 --warmup 3 $K --out $OUT/host-dsv3-$i.parquet > $OUT/host-dsv3-$i.txt 2>&1
done
grep -h "host" $OUT/host-*.txt
M=/tmp/m; rm -rf $M; mkdir -p $M/e6
run() { # pass graphs name E k D I T
  timeout 90 $B replay -q --gpus 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --experts $4 --top-k $5 --hidden-size $6 --intermediate-size $7 --tokens-per-rank $8 \
    --samples 8 --runs 10 --warmup 3 --cuda-graphs $2 --out $M/$1/$3-$8.parquet > $M/$1/$3-$8.txt 2>&1 \
    || echo "FAILED $1 $3 $8: $(tail -2 $M/$1/$3-$8.txt)"
  echo "$1 $3 $8 $(( $(date +%s) - t0 ))s"
}
S=("gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "olmoe 64 8 2048 1024" "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336")
for t in 128 512 2048 8192; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 400 ] && break 2; run e6 off $shape $t; done; done
python3 - <<'PY'
import glob, os, pyarrow as pa, pyarrow.parquet as pq
for p in ['e6']:
    fs = sorted(glob.glob(f'/tmp/m/{p}/*.parquet'))
    if not fs: continue
    ts = [pq.read_table(f) for f in fs]
    t = pa.concat_tables(ts)
    pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ['OUT'] + f'/matrix-{p}.parquet')
    print(p, 'rows', t.num_rows)
PY
mkdir -p $OUT/logs; cp $M/e6/*.txt $OUT/logs/ 2>/dev/null
echo "total $(( $(date +%s) - t0 ))s"
