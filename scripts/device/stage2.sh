#!/bin/bash
# One-GPU device call 2 (repo root on the GPU machine; binaries in .dev-gpu/):
# the per-projection GEMM grid for five expert shapes, one-GPU replays of
# the same shapes at decode-to-prefill batch sizes (for held-out accuracy:
# the grid's in-sample and held-out shapes are chosen afterwards, here), and
# the planner timed beside the reference's Python planner on this CPU.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
B=.dev-gpu/llep-trace
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/rep
L="$OUT/stage2.log"
{
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "== GEMM grid =="
time timeout 400 $B calibrate --gemm-only --base profiles/h200.json --out "$OUT/h200-gemm.json" 2>&1 | tail -15
echo "== one-GPU replays =="
for shape in "gptoss 128 4 2880 2880" "mixtral 8 2 4096 14336" "olmoe 64 8 2048 1024" \
             "deepseek 256 8 7168 2048" "qwen3 128 8 2048 768"; do
  set -- $shape
  for t in 128 512 2048 8192 32768; do
    timeout 120 $B replay -q --gpus 1 --synthetic balanced --policy ep --experts $2 --top-k $3 \
      --hidden-size $4 --intermediate-size $5 --tokens-per-rank $t --samples 8 \
      --out /tmp/rep/$1-$t.parquet > /tmp/rep/$1-$t.txt 2>&1 || echo "FAILED $1 $t: $(tail -2 /tmp/rep/$1-$t.txt)"
    grep -E "^balanced" /tmp/rep/$1-$t.txt | sed "s/^/$1 $t /"
  done
done
python3 - <<'PY'
import glob, pyarrow as pa, pyarrow.parquet as pq, os
ts = [pq.read_table(f) for f in sorted(glob.glob('/tmp/rep/*.parquet'))]
t = pa.concat_tables(ts)
meta = ts[0].schema.metadata
pq.write_table(t.replace_schema_metadata(meta), os.environ.get('OUT', '/tmp/out') + '/replays-1gpu.parquet')
print('rows', t.num_rows)
PY
if [ -x .dev-gpu/planner-bench ]; then
  echo "== planner against the reference, same CPU =="
  bash .dev-gpu/planner-timing.sh 2>&1 | tail -30
fi
} > "$L" 2>&1
tail -c 11000 "$L"
