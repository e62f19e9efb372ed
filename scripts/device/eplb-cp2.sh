#!/bin/bash
# CP2 (issue 14 parts 4-5): EP, LLEP and EPLB replayed on 2 x H200 (4 GPUs
# were not lent), each with its simulated twin: the gpt-oss synthetic
# scenarios and the bundled Mixtral and OLMoE traces, EPLB at R = E/8 and
# E/4 (Mixtral: 8 experts on 2 GPUs allow R = 2 and 4, not 1), LLEP at
# lambda 1.3 (traces also "always"), EPLB+LLEP; oracle placement (every
# input has one step, so a window placement would be EPLB's warm-up on equal
# loads). Then the replica splits (even, vllm) on the traces.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
D=.dev-gpu/eplbrep
B=$D/llep-trace
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/eplb-splits
L="$OUT/cp2.log"
K="--gpus 2 --alpha 1.0 --min-gemm 1024 --eplb-oracle --with-sim h200"
{
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
date -u
echo "== gpt-oss-120b layer, 6 scenarios, 32768 tokens/rank =="
/usr/bin/time -f "wall %e s" timeout 35 $B replay -q $K --synthetic balanced,30:4,50:4,80:4,95:4,95:1 \
  --policy ep,llep,eplb,eplb+llep --ratio 1.3 --redundant 16,32 --out "$OUT/gptoss-eplb.parquet"
echo "== OLMoE-1B-7B, 3 layers, 16384 tokens/rank =="
/usr/bin/time -f "wall %e s" timeout 15 $B replay -q $K --trace traces/olmoe-1b-7b.parquet --tokens-per-rank 16384 --runs 8 --warmup 2 \
  --act swiglu --policy ep,llep,eplb,eplb+llep --ratio 1.3,always --redundant 8,16 --out "$OUT/olmoe-eplb.parquet"
echo "== Mixtral-8x7B, layers 0-7, 16384 tokens/rank =="
/usr/bin/time -f "wall %e s" timeout 30 $B replay -q $K --trace traces/mixtral-8x7b.parquet --layers 0,1,2,3,4,5,6,7 \
  --tokens-per-rank 16384 --runs 8 --warmup 2 --act swiglu --policy ep,llep,eplb,eplb+llep --ratio 1.3,always --redundant 2,4 \
  --out "$OUT/mixtral-eplb.parquet"
date -u
for sp in even vllm; do
  echo "== replica split $sp: OLMoE (R=8,16) and Mixtral layers 0-3 (R=2,4), eplb only =="
  timeout 7 $B replay -q $K --trace traces/olmoe-1b-7b.parquet --tokens-per-rank 16384 --act swiglu \
    --policy eplb,eplb+llep --ratio always --redundant 8,16 --replica-split $sp --runs 5 --warmup 2 \
    --out /tmp/eplb-splits/olmoe-$sp.parquet | tail -13
  timeout 7 $B replay -q $K --trace traces/mixtral-8x7b.parquet --layers 0,1,2,3 --tokens-per-rank 16384 \
    --act swiglu --policy eplb,eplb+llep --ratio always --redundant 2,4 --replica-split $sp --runs 5 --warmup 2 \
    --out /tmp/eplb-splits/mixtral-$sp.parquet | tail -18
done
python3 - <<'PY'
import glob, os, pyarrow as pa, pyarrow.parquet as pq
fs = sorted(glob.glob('/tmp/eplb-splits/*.parquet'))
if fs:
    ts = [pq.read_table(f) for f in fs]
    t = pa.concat_tables(ts)
    pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ.get('OUT', '/tmp/out') + '/splits-eplb.parquet')
    print('split rows', t.num_rows)
PY
echo "== compare (all measured rows, h200) =="
timeout 5 $B compare "$OUT"/*-eplb.parquet --profile h200 2>&1 | tail -4
date -u
} > "$L" 2>&1
tail -c 5000 "$L"
