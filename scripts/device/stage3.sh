#!/bin/bash
# Two-GPU device call (repo root; binary in .dev-gpu/): the full calibration
# (token exchange, weight transfers, per-message model, memory by
# component) and the issue-12 accuracy matrix on 2 GPUs: five expert shapes
# x five batch sizes x balanced / moderate / extreme skew x EP, LLEP at 1.3
# and llep-auto, each with its simulated twin.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
B=.dev-gpu/llep-trace
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/m
L="$OUT/stage3.log"
{
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "== full calibration, 2 GPUs =="
time timeout 240 $B calibrate --gpus 2 --out "$OUT/h200-2gpu-full.json" 2>&1 | tail -25
echo "== matrix =="
for shape in "gptoss 128 4 2880 2880" "mixtral 8 2 4096 14336" "olmoe 64 8 2048 1024" \
             "deepseek 256 8 7168 2048" "qwen3 128 8 2048 768"; do
  set -- $shape
  for t in 128 512 2048 8192 32768; do
    timeout 150 $B replay -q --gpus 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto \
      --experts $2 --top-k $3 --hidden-size $4 --intermediate-size $5 --tokens-per-rank $t --samples 8 \
      --runs 8 --warmup 2 --with-sim h200 --out /tmp/m/$1-$t.parquet > /tmp/m/$1-$t.txt 2>&1 \
      || echo "FAILED $1 $t: $(tail -2 /tmp/m/$1-$t.txt)"
    echo "$1 $t done $(date +%T)"
  done
done
python3 - <<'PY'
import glob, os, pyarrow as pa, pyarrow.parquet as pq
ts = [pq.read_table(f) for f in sorted(glob.glob('/tmp/m/*.parquet'))]
t = pa.concat_tables(ts)
pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ.get('OUT', '/tmp/out') + '/matrix-2gpu.parquet')
print('rows', t.num_rows)
PY
cat /tmp/m/*.txt > "$OUT/matrix-2gpu.txt"
} > "$L" 2>&1
tail -c 6000 "$L"
