#!/bin/bash
# Session 8, call 11 (2 x H200): is the training step's LLEP check reproducible between processes through NCCL?
# The GPU test's tiny layer (8 experts, top-2, D 64, I 32, 2,048 tokens/GPU, balanced,95:1), --pass train, 5 processes each.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
B=.dev-gpu/ce11/llep-trace
T="replay --gpus 2 --tokens-per-rank 2048 --experts 8 --top-k 2 --hidden-size 64 --intermediate-size 32 --synthetic balanced,95:1 --min-gemm 16 --ratio 1.3 --pass train"
for v in "nccl cublas 2" "nccl cublas 1" "nccl lt 2" "copy-engine cublas 2"; do
  set -- $v
  for i in 1 2 3 4 5; do
    timeout 30 $B -q $T --exchange $1 --gemm $2 --warmup 1 --runs $3 --out $OUT/t-$1-$2-$3-$i.parquet > /dev/null 2>&1 || echo "fail $v $i"
  done
done
python3 - <<'PY'
import glob, os, pandas as pd
O = os.environ['OUT']; rows = []
for f in sorted(glob.glob(O + '/t-*.parquet')):
    t = pd.read_parquet(f)
    for _, r in t.iterrows():
        rows.append((os.path.basename(f)[2:-10], os.path.basename(f)[-9:-8], r.scenario, r.policy, r.rel_error))
d = pd.DataFrame(rows, columns=['run', 'i', 'scen', 'pol', 'err'])
print(d.pivot_table(index=['run', 'scen', 'pol'], columns='i', values='err').to_string(float_format=lambda x: '%.7f' % x))
PY
