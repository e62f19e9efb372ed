#!/bin/bash
# Session 11, call 8 (2 x H200): data for the pipelined model's bias (balanced layers priced 10-13% fast at 6
# chunks, 95:1 priced 3-5% slow): DeepSeek-V3 and OLMoE at 8,192 tok/GPU, balanced and 95:1, EP, graphs, with
# the schedule sequential, pipelined in 2 and in 6 chunks, and in 6 chunks through the copy engines (no SMs
# taken by the exchange). This session's final build.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/s11c8; B=$D/llep-trace
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
S=("deepseek 256 8 7168 2048" "olmoe 64 8 2048 1024")
for r in 1 2; do for shape in "${S[@]}"; do set -- $shape
  for v in "seq:--overlap off" "ch2:--overlap on --overlap-chunks 2" "ch6:--overlap on --overlap-chunks 6" "ce6:--overlap on --overlap-chunks 6 --exchange copy-engine"; do
    tag=${v%%:*}; opts=${v#*:}
    timeout 90 $B replay -q --gpus 2 --synthetic balanced,95:1 --policy ep \
      --experts $2 --top-k $3 --hidden-size $4 --intermediate-size $5 --tokens-per-rank 8192 \
      --samples 4 --runs 10 --warmup 3 --cuda-graphs on $opts --out $OUT/$1-$tag-$r.parquet > $OUT/$1-$tag-$r.txt 2>&1 || echo "FAILED $1 $tag $r"
    echo "$1 $tag $r $(( $(date +%s) - t0 ))s"
  done
done; done
python3 - <<'PY'
import glob, os, pandas as pd
O = os.environ['OUT']
for f in sorted(glob.glob(O + '/*.parquet')):
    t = pd.read_parquet(f); n = os.path.basename(f)[:-8]
    g = t.groupby('scenario')[['t_total_ms','t_compute_ms','t_dispatch_ms','t_combine_ms','t_exposed_comm_ms']].mean()
    print(f"{n:18s}", ' '.join(f"{s}: tot {r.t_total_ms:.2f} comp {r.t_compute_ms:.2f} disp {r.t_dispatch_ms:.2f} comb {r.t_combine_ms:.2f} exp {r.t_exposed_comm_ms:.2f} |" for s, r in g.iterrows()))
PY
echo "total $(( $(date +%s) - t0 ))s"
