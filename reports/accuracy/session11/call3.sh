#!/bin/bash
# Session 11, call 3 (1 x H200; only one GPU was lent then): the lent host's CPU. 1 planner bench section (c),
# session 10's build and this session's, in turns: llep-auto's decision warm and with the caches flushed,
# on the lent host's CPU; 2 a one-GPU replay (EP) with the diagnostic build (diag.patch): the CPU rank 0's
# worker thread plans on, per run, and the host checkpoints, free and pinned to one CPU (DIAG_PIN).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/s11c3b; B=$D/llep-trace-diag
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nvidia-smi topo -m; lscpu; } > $OUT/smi.txt 2>&1
for i in 1 2; do for b in old new; do
  timeout 60 $D/planner-$b --bench --decision-only > $OUT/bench-$b-$i.txt 2>&1; grep -A12 "llep-auto decision" $OUT/bench-$b-$i.txt | tail -10 | sed "s/^/$b$i /"
done; done
one() { # tag pin E k D I T name
  local tag=$1 pin=$2; shift 2
  if [ "$pin" = none ]; then unset DIAG_PIN; else export DIAG_PIN=$pin; fi
  LLEP_TRACE_HOST_TIMING=1 timeout 60 $B replay -q --gpus 1 --synthetic balanced,30:4 --policy ep \
    --experts $1 --top-k $2 --hidden-size $3 --intermediate-size $4 --tokens-per-rank $5 \
    --samples 8 --runs 20 --warmup 3 --cuda-graphs on --out $OUT/$tag-$6-$5.parquet > $OUT/$tag-$6-$5.txt 2>&1 || echo "FAILED $tag $6 $5"
  unset DIAG_PIN
}
for r in 1 2; do
for pin in none 4 12; do
  one free$pin-$r $pin 128 8 2048 768 128 qwen3
  one free$pin-$r $pin 256 8 7168 2048 128 deepseek
done; done
for f in $OUT/free*.txt; do n=$(basename $f .txt)
  echo "$n $(grep runcpu $f | awk '{n++; if (NR>1 && $2!=prev) m++; prev=$2; c[$2]=1} END {s=""; for (k in c) s=s k ","; printf "runs=%d cpu-changes=%d cpus=%s", n, m, s}')"
  grep "host us" $f | awk '{printf "   %s: counts %s planned %s decided %s laid %s tables %s\n", $3, $7, $9, $11, $14, $16}'
done
python3 - <<'PY'
import glob, os, pandas as pd
O = os.environ['OUT']
for f in sorted(glob.glob(O + '/free*.parquet')):
    t = pd.read_parquet(f); n = os.path.basename(f)[:-8]
    print(f"{n:22s}", ' '.join(f"{r.scenario}:{r.t_total_ms:.3f}(o{r.t_overhead_ms*1e3:.0f})" for r in t.itertuples()))
PY
echo "total $(( $(date +%s) - t0 ))s"
