#!/bin/bash
# Session 9, call 8 (2 x H200): replay --compute-streams 2 (large units alternating between two streams).
# 1 all GPU tests (one new: two streams bit for bit one); 2 the gpt-oss layer at 32,768 tok/GPU, 1 vs 2
# streams, NCCL and copy engines, overlap on and off, turns A B A B; 3 Mixtral and DeepSeek-V3 at 8,192 and
# the Qwen3 decode layer, 1 vs 2.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/v8; B=$D/llep-trace
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
timeout 110 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
timeout 40 $D/gpu_gemm --test-threads 1 >> $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
grep -E "test result|rc=|panicked" $OUT/gpu-tests.txt
SC=balanced,30:4,50:4,80:4,95:4,95:1
for turn in a b; do for ov in on off; do for x in nccl copy-engine; do for s in 1 2; do
  [ $(( $(date +%s) - t0 )) -gt 330 ] && break 4
  timeout 60 $B replay -q --gpus 2 --tokens-per-rank 32768 --synthetic $SC --policy ep,llep --ratio 1.3 \
    --alpha 1.0 --min-gemm 1024 --overlap $ov --exchange $x --compute-streams $s --samples 8 --runs 10 --warmup 3 \
    --out $OUT/gptoss-$turn-$ov-${x%%-*}-s$s.parquet > $OUT/gptoss-$turn-$ov-${x%%-*}-s$s.txt 2>&1 || echo "FAILED gptoss $turn $ov $x $s"
done; done; done; done
echo "gptoss done $(( $(date +%s) - t0 ))s"
run() { # name E k D I T s
  timeout 60 $B replay -q --gpus 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3 --experts $2 --top-k $3 \
    --hidden-size $4 --intermediate-size $5 --tokens-per-rank $6 --compute-streams $7 --samples 8 --runs 10 --warmup 3 \
    --out $OUT/$1-$6-s$7.parquet > $OUT/$1-$6-s$7.txt 2>&1 || echo "FAILED $1 $6 $7"
}
for s in 1 2 1 2; do
  [ $(( $(date +%s) - t0 )) -gt 420 ] && break
  run mixtral 8 2 4096 14336 8192 $s; run deepseek 256 8 7168 2048 8192 $s; run qwen3 128 8 2048 768 512 $s
done
echo "others done $(( $(date +%s) - t0 ))s"
python3 - <<'PY'
import glob, os, pandas as pd
O = os.environ['OUT']; rows = []
for f in sorted(glob.glob(O + '/*.parquet')):
    t = pd.read_parquet(f); n = os.path.basename(f)[:-8]
    for _, r in t.iterrows():
        rows.append((n, r.scenario, r.policy, r.t_total_ms, r.t_compute_ms, r.rel_error, r.compute_streams))
d = pd.DataFrame(rows, columns=['run', 'scen', 'pol', 'total', 'comp', 'err', 'streams'])
d.to_csv(O + '/summary.csv', index=False)
d['cfg'] = d.run.str.replace(r'^gptoss-[ab]-', 'gptoss-', regex=True)
pd.set_option('display.width', 250)
print(d.pivot_table(index=['cfg'], columns=['scen', 'pol'], values='total', aggfunc='median').round(2).to_string())
print('max rel_error', d.err.max())
PY
