#!/bin/bash
# Session 10, call 3 (2 x H200): is the eager decode layer's process-to-process spread (1.2 against 1.6 ms in
# call 1) where the host threads run? The host's CPUs and topology; Qwen3 at 512 tok/GPU eager, whole process
# under taskset on different CPU sets, two processes each; llep-auto's host checkpoints without the warm-up.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/w3; B=$D/llep-trace
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nvidia-smi topo -m; lscpu | head -30; } > $OUT/smi.txt 2>&1
cat $OUT/smi.txt | grep -E "GPU0|GPU1|NUMA|Model name|Thread|Core|Socket|MHz" | head -20
Q="--synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto --experts 128 --top-k 8 --hidden-size 2048 --intermediate-size 768 --tokens-per-rank 512"
one() { # name prefix...
  local n=$1; shift
  LLEP_TRACE_HOST_TIMING=1 timeout 60 "$@" $B replay -q --gpus 2 --samples 8 --runs 10 --warmup 3 $Q --out $OUT/$n.parquet > $OUT/$n.txt 2>&1 || echo "FAILED $n"
}
for i in 1 2 3; do one free-$i env; done
ncpu=$(nproc); half=$((ncpu / 2))
for i in 1 2; do one lo-$i taskset -c 0-7; one hi-$i taskset -c $half-$((half + 7)); one four-$i taskset -c 0-3; done
python3 - <<'PY'
import glob, os, pandas as pd
O = os.environ['OUT']
for f in sorted(glob.glob(O + '/*.parquet')):
    t = pd.read_parquet(f); n = os.path.basename(f)[:-8]
    print(f"{n:8s}", ' '.join(f"{r.scenario[:4]}/{r.policy[:6]}:{r.t_total_ms:.3f}(o{r.t_overhead_ms*1e3:.0f})" for r in t.itertuples()))
PY
grep -h "host us 30:4" $OUT/free-*.txt
echo "total $(( $(date +%s) - t0 ))s"
