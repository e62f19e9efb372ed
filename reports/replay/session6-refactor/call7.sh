#!/bin/bash
# Session 6, call 7: is the training step's dense-check error of the LLEP 95:1 row repeatable within one build?
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/rep6
for i in 1 2 3; do for b in before after; do
  B=$D/llep-trace; [ $b = before ] && B=$D/llep-trace-before
  timeout 60 $B replay -q --gpus 2 --synthetic balanced,95:1 --policy ep,llep --ratio 1.3 --gemm cublas --pass train \
    --experts 16 --top-k 2 --hidden-size 1024 --intermediate-size 512 --tokens-per-rank 2048 \
    --samples 64 --runs 3 --warmup 2 --out $OUT/$b-$i.parquet > /dev/null 2> $OUT/$b-$i.err
done; done
python3 - <<'PY'
import os, glob, pyarrow.parquet as pq
for f in sorted(glob.glob(os.environ['OUT']+'/*.parquet')):
    print(os.path.basename(f), list(pq.read_table(f).to_pandas().rel_error))
PY
