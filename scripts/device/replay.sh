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
calib)
  timeout 200 $B calibrate --gpus 2 --out "$OUT/profile.json" 2>&1 | tee "$OUT/calibrate.log"
  timeout 200 $B replay --synthetic balanced,30:4,50:4,80:4,95:4,95:1 --ratio 1.3,always --alpha 1.0 \
    --min-gemm 1024 --with-sim h200 --out "$OUT/gptoss.parquet" 2>&1 | grep -v "^case " | tee "$OUT/gptoss.log"
  bash "$0" accuracy
  ;;
final)
  timeout 200 $B calibrate --gpus 2 --out "$OUT/profile.json" 2>&1 | tee "$OUT/calibrate.log"
  timeout 60 $B replay --synthetic balanced,95:1 --gpus 1 --tokens-per-rank 256 --experts 8 --top-k 2 \
    --hidden-size 64 --intermediate-size 32 --runs 2 --warmup 1 --ratio 1.3 2>&1 | tee "$OUT/one-gpu.log"
  for r in 0 1; do
    WORLD_SIZE=2 RANK=$r LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=29555 timeout 120 \
      $B replay --gpus 2 --synthetic balanced,30:4,50:4,80:4,95:4,95:1 --ratio 1.3 --alpha 1.0 --min-gemm 1024 \
      --out "$OUT/mp.parquet" > "$OUT/mp$r.log" 2>&1 &
  done
  wait
  echo "== 2-process rank 0 =="; cat "$OUT/mp0.log"; echo "== rank 1 =="; cat "$OUT/mp1.log"
  ;;
accuracy)
  # the measured rows for the cost-model accuracy comparison, plus the
  # simulated twins (h200 profile) of the same inputs
  L="$OUT/replay.log"; : > "$L"
  run() { echo "### llep-trace replay $*" | tee -a "$L"; timeout 300 $B replay "$@" 2>&1 | tee -a "$L"; }
  S=balanced,30:4,50:4,80:4,95:4,95:1
  run --synthetic $S --tokens-per-rank 32768 $GPT --with-sim h200 --out /tmp/r1.parquet
  run --synthetic $S --tokens-per-rank 8192 $GPT --with-sim h200 --out /tmp/r2.parquet
  run --synthetic $S --tokens-per-rank 32768 --hidden-size 2048 --intermediate-size 1024 --experts 64 --top-k 8 --act swiglu $GPT --with-sim h200 --out /tmp/r3.parquet
  run --synthetic $S --tokens-per-rank 8192 --hidden-size 2048 --intermediate-size 1024 --experts 64 --top-k 8 --act swiglu $GPT --with-sim h200 --out /tmp/r4.parquet
  run --trace traces/olmoe-1b-7b.parquet --tokens-per-rank 16384 --act swiglu $GPT --with-sim h200 --out /tmp/r5.parquet
  run --trace traces/mixtral-8x7b.parquet --tokens-per-rank 16384 --act swiglu $GPT --with-sim h200 --out /tmp/r6.parquet
  for r in 0 1; do
    WORLD_SIZE=2 RANK=$r LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=29555 timeout 120 \
      $B replay --gpus 2 --synthetic balanced,95:1 --tokens-per-rank 32768 $GPT --runs 5 \
      > "$OUT/mp$r.log" 2>&1 &
  done
  wait
  python3 - "$OUT" <<'PY'
import sys, pyarrow as pa, pyarrow.parquet as pq
out = sys.argv[1]
ts = [pq.read_table(f"/tmp/r{i}.parquet") for i in range(1, 7)]
meta = ts[0].schema.metadata
allr = pa.concat_tables(ts).replace_schema_metadata(meta)
pq.write_table(allr, f"{out}/replay-vs-sim.parquet")
meas = allr.filter(pa.compute.equal(allr["source"], "measured"))
pq.write_table(meas, f"{out}/measured-accuracy.parquet")
print("rows", allr.num_rows, "measured", meas.num_rows)
PY
  echo "== 2-process rank 0 =="; cat "$OUT/mp0.log"; echo "== rank 1 =="; cat "$OUT/mp1.log"
  ;;
*)
  echo "unknown stage $stage"; exit 2;;
esac
