#!/bin/bash
# CP2 (issue 14 parts 4-5): EP, LLEP and EPLB replayed on 2 x H200 (4 GPUs
# were not lent), each row with its simulated twin (--with-sim h200):
# - gpt-oss-120b layer, 6 synthetic scenarios at 32768 tokens/rank, EPLB
#   R = E/8 = 16 and E/4 = 32, oracle placement (one step per scenario);
# - Mixtral-8x7B layers 0-7 (one step): R = 2 and 4 (8 experts on 2 GPUs
#   do not allow R = E/8 = 1), oracle placement;
# - OLMoE-1B-7B, all 6 steps x 3 layers: R = 8 and 16, oracle placement,
#   then the online rule (placement from the previous step, rebalanced every
#   step; its weight moves are not replayed);
# - the replica splits even and vllm on OLMoE (oracle).
# LLEP at lambda 1.3 (traces also "always"), EPLB+LLEP at the same gates.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
D=.dev-gpu/eplbrep
B=$D/llep-trace
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/eplb-extra
L="$OUT/cp2.log"
K="--gpus 2 --alpha 1.0 --min-gemm 1024 --with-sim h200"
OL="--trace traces/olmoe-1b-7b.parquet --steps 0,1,2,3,4,5 --tokens-per-rank 16384 --act swiglu --runs 8 --warmup 2 --samples 16"
{
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
date -u
echo "== gpt-oss-120b layer, 6 scenarios, 32768 tokens/rank, oracle =="
/usr/bin/time -f "wall %e s" timeout 30 $B replay -q $K --eplb-oracle --synthetic balanced,30:4,50:4,80:4,95:4,95:1 \
  --policy ep,llep,eplb,eplb+llep --ratio 1.3 --redundant 16,32 --out "$OUT/gptoss-eplb.parquet"
echo "== Mixtral-8x7B, layers 0-7, 16384 tokens/rank, oracle =="
/usr/bin/time -f "wall %e s" timeout 28 $B replay -q $K --eplb-oracle --trace traces/mixtral-8x7b.parquet \
  --layers 0,1,2,3,4,5,6,7 --tokens-per-rank 16384 --act swiglu --runs 8 --warmup 2 --samples 16 \
  --policy ep,llep,eplb,eplb+llep --ratio 1.3,always --redundant 2,4 --out "$OUT/mixtral-eplb.parquet"
echo "== OLMoE-1B-7B, 6 steps x 3 layers, 16384 tokens/rank, oracle =="
/usr/bin/time -f "wall %e s" timeout 22 $B replay -q $K --eplb-oracle $OL \
  --policy ep,llep,eplb,eplb+llep --ratio 1.3,always --redundant 8,16 --out "$OUT/olmoe-eplb.parquet" | tail -40
echo "== OLMoE-1B-7B, placement from the previous step (window 1, period 1) =="
/usr/bin/time -f "wall %e s" timeout 16 $B replay -q $K --eplb-window 1 --eplb-period 1 $OL \
  --policy eplb,eplb+llep --ratio 1.3,always --redundant 8,16 --out /tmp/eplb-extra/olmoe-window.parquet | tail -30
date -u
for sp in even vllm; do
  echo "== OLMoE, replica split $sp, oracle =="
  timeout 7 $B replay -q $K --eplb-oracle $OL --policy eplb --redundant 8,16 --replica-split $sp \
    --out /tmp/eplb-extra/olmoe-$sp.parquet | tail -12
done
python3 - <<'PY'
import glob, os, pyarrow as pa, pyarrow.parquet as pq
fs = sorted(glob.glob('/tmp/eplb-extra/*.parquet'))
if fs:
    ts = [pq.read_table(f) for f in fs]
    t = pa.concat_tables(ts)
    pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ.get('OUT', '/tmp/out') + '/olmoe-extra-eplb.parquet')
    print('extra rows', t.num_rows, [os.path.basename(f) for f in fs])
PY
echo "== compare (all measured rows, h200) =="
timeout 4 $B compare "$OUT"/*-eplb.parquet --profile h200 2>&1 | tail -3
date -u
} > "$L" 2>&1
tail -c 4000 "$L"
