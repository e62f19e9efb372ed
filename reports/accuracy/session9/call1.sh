#!/bin/bash
# Session 9, call 1 (2 x H200). 1 verify 4b37efe (session 8's review mends, never run on a GPU): all GPU
# tests + a 2-GPU calibrate (copy engines). 2 the batched-activation build: all GPU tests; gemm-bench's
# layer variants (per unit / batched); the gpt-oss layer at 32,768 tok/GPU and a Qwen3 decode layer under
# batch bounds unit / 24 MiB / 64 MiB / 400 MiB (LLEP_PROBE_ACT_BATCH, a probe-only knob).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/v1; OLD=$D/llep-old; NEW=$D/llep-probe
t0=$(date +%s); el() { echo "$(( $(date +%s) - t0 ))s"; }
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt 2>&1
mkdir -p /work/main/target/release; cp $OLD /work/main/target/release/llep-trace
timeout 120 $D/gpu_replay --test-threads 1 > $OUT/old-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/old-tests.txt
timeout 40 $D/gpu_gemm --test-threads 1 >> $OUT/old-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/old-tests.txt
echo "$(el) old tests: $(grep -E 'test result|rc=' $OUT/old-tests.txt | tr '\n' ' ')" | tee -a $OUT/log.txt
timeout 100 $OLD calibrate --gpus 2 --out $OUT/cal-2gpu.json --shapes 2880:2880 --tokens 256,4096 --grid-shapes "" --reps 5 > $OUT/calibrate.txt 2>&1
echo "$(el) calibrate rc=$?" | tee -a $OUT/log.txt
grep -iE "copy engine|ce_|GB/s" $OUT/calibrate.txt | head -8
cp $NEW /work/main/target/release/llep-trace
timeout 120 $D/gpu_replay_new --test-threads 1 > $OUT/new-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/new-tests.txt
timeout 40 $D/gpu_gemm_new --test-threads 1 >> $OUT/new-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/new-tests.txt
echo "$(el) new tests: $(grep -E 'test result|rc=' $OUT/new-tests.txt | tr '\n' ' ')" | tee -a $OUT/log.txt
grep -E "panicked|FAILED" $OUT/new-tests.txt | head -5
bench() { # name shape experts rows
  timeout 60 $NEW gemm-bench -q --shape $2 --layer-experts $3 --layer-rows $4 --rows $4 --gemm lt --reps 10 > $OUT/bench-$1.txt 2>&1
  echo "$(el) bench $1 rc=$?" >> $OUT/log.txt
}
bench gptoss-2g 2880:2880 64 2048; bench gptoss-4g 2880:2880 32 4096
bench qwen3-512 2048:768 64 64; bench qwen3-2048 2048:768 64 256; bench ds-512 7168:2048 128 32
for f in $OUT/bench-*.txt; do echo "== $(basename $f)"; grep -E "layer|act" $f | head -12; done
for bb in unit 24 64 400; do
  for x in nccl copy-engine; do
    LLEP_PROBE_ACT_BATCH=$bb timeout 60 $NEW replay -q --gpus 2 --tokens-per-rank 32768 --synthetic balanced,50:4,95:1 --policy ep,llep \
      --ratio 1.3 --min-gemm 1024 --overlap on --exchange $x --samples 8 --runs 10 --warmup 3 \
      --out $OUT/gptoss-$bb-${x%%-*}.parquet > $OUT/gptoss-$bb-${x%%-*}.txt 2>&1
    echo "$(el) gptoss $bb $x rc=$?" >> $OUT/log.txt
  done
  LLEP_PROBE_ACT_BATCH=$bb timeout 40 $NEW replay -q --gpus 2 --synthetic balanced,30:4,95:1 --experts 128 --top-k 8 --hidden-size 2048 \
    --intermediate-size 768 --tokens-per-rank 512 --policy ep,llep --ratio 1.3 --samples 8 --runs 10 --warmup 3 \
    --out $OUT/qwen3-$bb.parquet > $OUT/qwen3-$bb.txt 2>&1; echo "$(el) qwen3 $bb rc=$?" >> $OUT/log.txt
  LLEP_PROBE_ACT_BATCH=$bb timeout 40 $NEW replay -q --gpus 2 --synthetic balanced,30:4,95:1 --experts 128 --top-k 8 --hidden-size 2048 \
    --intermediate-size 768 --tokens-per-rank 512 --policy ep,llep --ratio 1.3 --samples 8 --runs 10 --warmup 3 --cuda-graphs on \
    --out $OUT/qwen3g-$bb.parquet > $OUT/qwen3g-$bb.txt 2>&1; echo "$(el) qwen3 graphs $bb rc=$?" >> $OUT/log.txt
done
python3 - <<'PY'
import glob, os, pandas as pd
O = os.environ['OUT']; rows = []
for f in sorted(glob.glob(O + '/*.parquet')):
    t = pd.read_parquet(f); n = os.path.basename(f)[:-8]
    for _, r in t.iterrows():
        rows.append((n, r.scenario, r.policy, r.t_total_ms, r.t_compute_ms, r.rel_error))
d = pd.DataFrame(rows, columns=['run', 'scen', 'pol', 'total', 'comp', 'err'])
d.to_csv(O + '/summary.csv', index=False)
pd.set_option('display.width', 250)
print(d.pivot_table(index=['scen', 'pol'], columns=['run'], values='total').round(3).T.to_string())
print('max rel_error', d.err.max())
PY
