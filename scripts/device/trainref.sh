#!/bin/bash
# Issue 13 (training step), device side of the trainref helper: the
# backward GEMM grid (calibrate --gemm-only --bwd) on 1 GPU and the
# reference's training step (scripts/train_reference.py) on 2 GPUs, on the
# routing our binary exports. Args: cp1 (grid of one shape, harness dry
# run) or cp2 (full grid, full harness). Binary and harness in $D.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 PYTHONUNBUFFERED=1
D=${D:-.dev-gpu/trainref}
B=$D/llep-trace
H=$D/train_reference.py; [ -f $H ] || H=scripts/train_reference.py
OUT=${OUT:-/tmp/out}
MODE=${1:-cp1}
BUDGET=${BUDGET:-96}
T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
# seconds for a step: what is left less a reserve, at least 5
upto() { local s=$(( $(left) - $1 )); [ $s -lt 5 ] && s=5; echo $s; }
SC=balanced,30:4,50:4,80:4,95:4,95:1
L=$OUT/log.txt
{
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
if [ "$MODE" = cp1 ]; then
  GRID="--grid-shapes 2880:2880"; GT=30
else
  GRID="--grid-shapes 2880:2880,2048:1024,4096:14336,2048:768,7168:2048"; GT=${GT:-35}
fi
echo "== backward GEMM grid (1 GPU) $(left)s left =="
if [ "$MODE" = cp1 ]; then CAL="--gemm-only --bwd"; else CAL=--bwd-only; fi
time timeout $GT $B calibrate $CAL $GRID --reps 5 --out $OUT/bwd-grid.json 2>&1 | tail -12
echo "== routing export =="
rm -rf /tmp/rt-small /tmp/rt-full
timeout 20 $B simulate --synthetic $SC --gpus 2 --tokens-per-rank 2048 --export-routing /tmp/rt-small 2>&1 | tail -2
timeout 20 $B simulate --synthetic $SC --gpus 2 --export-routing /tmp/rt-full 2>&1 | tail -2
du -sh /tmp/rt-full
if [ "$MODE" = cp1 ]; then
  echo "== harness dry run, 2048 tokens per GPU, balanced and 95:1 $(left)s left =="
  timeout $(upto 30) python3 -m torch.distributed.run --nproc_per_node 2 $H \
    --routing /tmp/rt-small --peer .dev-gpu/peers/LeastLoadedEP --out $OUT/ref-dry.csv \
    --scenarios balanced,95:1 --warmup 1 --runs 1 2>&1 | grep -v "^W1129\|OMP_NUM" | tail -15
  echo "== harness, full size, 1 warm-up and 2 runs $(left)s left =="
  timeout $(upto 3) python3 -m torch.distributed.run --nproc_per_node 2 $H \
    --routing /tmp/rt-full --peer .dev-gpu/peers/LeastLoadedEP --out $OUT/ref-quick.csv \
    --warmup 1 --runs 2 2>&1 | grep -v "^W1129\|OMP_NUM" | tail -20
else
  echo "== harness, full size $(left)s left =="
  timeout $(upto 3) python3 -m torch.distributed.run --nproc_per_node 2 $H \
    --routing /tmp/rt-full --peer .dev-gpu/peers/LeastLoadedEP --out $OUT/ref-train.csv \
    --warmup ${WARMUP:-2} --runs ${RUNS:-5} --probe-select 2>&1 | grep -v "^W1129\|OMP_NUM" | tail -20
fi
echo "elapsed $(( $(date +%s) - T0 ))s"
} > "$L" 2>&1
tail -c 5000 "$L"
