#!/bin/bash
# Issue 15 part 2 (overlap15), checkpoint 2: the pipelined schedule
# (--overlap on) against the sequential one on the gpt-oss-120b layer, 4 GPUs,
# plus smaller batches to choose where overlap pays. Run from the repo root:
# timeout 180 bash .dev-gpu/overlap15/run.sh (binary beside it).
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
B=.dev-gpu/overlap15/llep-trace
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/ov
L="$OUT/cp2.log"
BUDGET=${BUDGET:-172}
# seconds for a step: its cap, or what is left of the budget
cap() { local left=$((BUDGET - SECONDS)); [ "$1" -lt "$left" ] && echo "$1" || echo "$left"; }
GPT="--ratio 1.3 --alpha 1.0 --min-gemm 1024"
G=$(nvidia-smi -L | grep -c '^GPU ')
step() { # name cap args...
  local name=$1 c; c=$(cap "$2"); shift 2
  if [ "$c" -le 3 ]; then echo "SKIPPED $name (budget)"; return; fi
  echo "### [$SECONDS s] $name: llep-trace $*"
  timeout "$c" $B "$@" 2>&1 | grep -v "^case " || echo "FAILED/TIMEOUT $name"
}
{
date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
step tiny-check 30 replay -q --gpus 2 --tokens-per-rank 2048 --experts 8 --top-k 2 --hidden-size 64 \
  --intermediate-size 32 --runs 2 --warmup 1 --synthetic balanced,95:1 --ratio 1.3 --min-gemm 16 --overlap-chunks 3
step tiny-eplb 25 replay -q --gpus 2 --tokens-per-rank 2048 --experts 8 --top-k 2 --hidden-size 64 \
  --intermediate-size 32 --runs 2 --warmup 1 --synthetic 95:1 --policy eplb,eplb+llep --ratio always \
  --redundant 2 --eplb-oracle --replica-split even --min-gemm 16 --overlap-chunks 3
step on-32k 60 replay --gpus $G --synthetic balanced,30:4,50:4,80:4,95:4,95:1 --policy ep,llep $GPT \
  --overlap on --with-sim h200 --out /tmp/ov/on.parquet
step off-32k 50 replay --gpus $G --synthetic balanced,30:4,50:4,80:4,95:4,95:1 --policy ep,llep $GPT \
  --overlap off --out /tmp/ov/off.parquet
for t in 8192 2048; do
  step on2-$t 20 replay -q --gpus $G --tokens-per-rank $t --synthetic balanced,30:4 --policy llep $GPT \
    --overlap-chunks 2 --runs 6 --warmup 2 --out /tmp/ov/s$t-on2.parquet
  step off-$t 18 replay -q --gpus $G --tokens-per-rank $t --synthetic balanced,30:4 --policy llep $GPT \
    --overlap off --runs 6 --warmup 2 --out /tmp/ov/s$t-off.parquet
done
for c in 2 6; do
  step on$c-32k 25 replay -q --gpus $G --synthetic balanced,30:4 --policy llep $GPT --overlap-chunks $c \
    --runs 6 --warmup 2 --out /tmp/ov/on$c.parquet
done
step on-normalprio 25 replay -q --gpus $G --synthetic balanced,30:4 --policy llep $GPT --overlap on \
  --overlap-normal-priority --runs 6 --warmup 2 --out /tmp/ov/normalprio.parquet
# fewer NCCL channels: fewer SMs taken from the GEMMs while exchanges run
for nch in 8; do
  NCCL_MAX_NCHANNELS=$nch step on-nch$nch 25 replay -q --gpus $G --synthetic balanced,30:4 --policy llep $GPT \
    --overlap on --runs 6 --warmup 2 --out /tmp/ov/nch$nch.parquet
done
python3 - <<'PY' || true
import glob, os, pyarrow as pa, pyarrow.parquet as pq
fs = sorted(glob.glob('/tmp/ov/*.parquet'))
ts = []
for f in fs:
    t = pq.read_table(f)
    ts.append(t.append_column('file', pa.array([os.path.basename(f)] * t.num_rows)))
if ts:
    t = pa.concat_tables(ts, promote_options='default')
    pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ.get('OUT', '/tmp/out') + '/cp2.parquet')
    print('rows', t.num_rows, 'from', [os.path.basename(f) for f in fs])
PY
echo "done in $SECONDS s"
} > "$L" 2>&1
grep -E "^###|FAILED|SKIPPED|done in|llep|ep " "$L" | tail -60
