#!/bin/bash
# Session 9, call 9 (2 x H200): the final build (a second stream only where two large batches take turns).
# 1 all GPU tests; 2 the Qwen3 decode layer, 1 and 2 streams in turns (3 processes each); 3 the gpt-oss layer at
# 32,768 tok/GPU, NCCL and copy engines pipelined, 1 and 2 streams.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/v9; B=$D/llep-trace
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
timeout 120 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
timeout 40 $D/gpu_gemm --test-threads 1 >> $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
grep -E "test result|rc=|panicked" $OUT/gpu-tests.txt
for i in 1 2 3; do for s in 1 2; do
  timeout 40 $B replay -q --gpus 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3 --experts 128 --top-k 8 \
    --hidden-size 2048 --intermediate-size 768 --tokens-per-rank 512 --compute-streams $s --samples 8 --runs 10 --warmup 3 \
    --out $OUT/qwen3-$i-s$s.parquet > $OUT/qwen3-$i-s$s.txt 2>&1 || echo "FAILED qwen3 $i $s"
done; done
for x in nccl copy-engine; do for s in 1 2; do
  [ $(( $(date +%s) - t0 )) -gt 200 ] && break 2
  timeout 60 $B replay -q --gpus 2 --tokens-per-rank 32768 --synthetic balanced,50:4,95:1 --policy ep,llep --ratio 1.3 \
    --alpha 1.0 --min-gemm 1024 --exchange $x --compute-streams $s --samples 8 --runs 10 --warmup 3 \
    --out $OUT/gptoss-${x%%-*}-s$s.parquet > $OUT/gptoss-${x%%-*}-s$s.txt 2>&1 || echo "FAILED gptoss $x $s"
done; done
echo "done $(( $(date +%s) - t0 ))s"
python3 - <<'PY'
import glob, os, pandas as pd
O = os.environ['OUT']; rows = []
for f in sorted(glob.glob(O + '/*.parquet')):
    t = pd.read_parquet(f); n = os.path.basename(f)[:-8]
    for _, r in t.iterrows():
        rows.append((n, r.scenario, r.policy, r.t_total_ms, r.rel_error, r.compute_streams))
d = pd.DataFrame(rows, columns=['run', 'scen', 'pol', 'total', 'err', 'streams'])
d.to_csv(O + '/summary.csv', index=False)
pd.set_option('display.width', 250)
print(d.pivot_table(index=['run'], columns=['scen', 'pol'], values='total').round(3).to_string())
print('max rel_error', d.err.max())
PY
