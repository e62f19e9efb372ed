#!/bin/bash
# CP1 smoke of `replay` with EPLB on 2 GPUs (issue 14 part 4): small shapes,
# ep, llep, eplb, eplb+llep, all three replica splits, rel err printed;
# simulated twins (--with-sim) and `compare` over the rows; then one
# gpt-oss-sized case to size CP2.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
D=.dev-gpu/eplbrep
B=$D/llep-trace
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
L="$OUT/cp1.log"
SMALL="--gpus 2 --experts 16 --top-k 2 --hidden-size 512 --intermediate-size 512 --tokens-per-rank 2048 --runs 3 --warmup 1 --samples 16"
{
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
date -u
for sp in sglang even vllm; do
  echo "== small, split $sp (oracle) =="
  /usr/bin/time -f "wall %e s" timeout 25 $B replay $SMALL --synthetic balanced,95:1,30:4 \
    --policy ep,llep,eplb,eplb+llep --ratio 1.3 --redundant 2,4 --eplb-oracle --replica-split $sp \
    --with-sim h200 --out "$OUT/small-$sp.parquet" 2>&1 | grep -v "^\s*$"
done
echo "== small, sglang, window placement (warm-up rule: equal loads at step 0) =="
timeout 20 $B replay -q $SMALL --synthetic 95:1 --policy eplb,eplb+llep --ratio always --redundant 4 \
  --with-sim h200 2>&1 | tail -8
echo "== compare over the small rows =="
timeout 15 $B compare "$OUT"/small-*.parquet --profile h200 2>&1 | tail -40
echo "== olmoe trace layer, oracle, sglang =="
timeout 25 $B replay -q --gpus 2 --trace traces/olmoe-1b-7b.parquet --layers 0 --tokens-per-rank 4096 --act swiglu \
  --policy ep,llep,eplb,eplb+llep --ratio 1.3 --redundant 8,16 --eplb-oracle --runs 3 --warmup 1 --with-sim h200 2>&1 | tail -14
echo "== gpt-oss 95:1 at 32768 tokens/rank, oracle, R=16,32 (sizing CP2) =="
/usr/bin/time -f "wall %e s" timeout 30 $B replay -q --gpus 2 --synthetic 95:1 --policy ep,llep,eplb,eplb+llep --ratio 1.3 \
  --redundant 16,32 --eplb-oracle --runs 5 --warmup 2 --with-sim h200 2>&1 | tail -12
date -u
} > "$L" 2>&1
tail -c 9000 "$L"
