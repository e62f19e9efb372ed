#!/bin/bash
# Run on the GPU machine from the repo root: bash .dev-gpu/replay.sh STAGE
# (the binary and this script travel in .dev-gpu/). Logs go to $OUT.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
B=.dev-gpu/llep-trace
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
stage=${1:-smoke}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/smi.txt" 2>&1
cat "$OUT/smi.txt"
GPT="--ratio 1.3 --alpha 1.0 --min-gemm 1024"
case "$stage" in
smoke)
  timeout 120 $B replay --synthetic balanced,95:1 --tokens-per-rank 2048 --experts 16 --top-k 4 \
    --hidden-size 256 --intermediate-size 256 --runs 3 --warmup 1 $GPT 2>&1 | tee "$OUT/smoke.log"
  timeout 300 $B replay --synthetic balanced,30:4,50:4,80:4,95:4,95:1 $GPT --with-sim h200 \
    --out "$OUT/gptoss.parquet" 2>&1 | tee "$OUT/gptoss.log"
  for r in 0 1; do
    WORLD_SIZE=2 RANK=$r LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=29555 timeout 120 \
      $B replay --gpus 2 --synthetic balanced,95:1 --tokens-per-rank 8192 $GPT --runs 5 \
      > "$OUT/mp$r.log" 2>&1 &
  done
  wait
  echo "== 2-process rank 0 =="; cat "$OUT/mp0.log"; echo "== rank 1 =="; cat "$OUT/mp1.log"
  echo "== gpt-oss summary =="; cat "$OUT/gptoss.log" | tail -20
  ;;
*)
  echo "unknown stage $stage"; exit 2;;
esac
