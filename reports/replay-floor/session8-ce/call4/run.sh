#!/bin/bash
# Session 8, call 4 (2 x H200): GPU tests after the Ranges refactor; chunk counts under the copy engines;
# SM clocks and power while the layer runs pipelined and sequential (what the GEMMs' drag is).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/ce4; B=$D/llep-trace
t0=$(date +%s); el() { echo "$(( $(date +%s) - t0 ))s"; }
{ date -u; nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv,noheader; } > $OUT/smi.txt 2>&1
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
timeout 200 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
timeout 100 $D/gpu_gemm --test-threads 1 >> $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
echo "$(el) tests" >> $OUT/log.txt
grep -E "test result|rc=|panicked" $OUT/gpu-tests.txt | head
L="--gpus 2 --tokens-per-rank 32768 --policy ep,llep --ratio 1.3 --alpha 1.0 --min-gemm 1024 --samples 0 --runs 10 --warmup 3"
for v in "copy-engine 4" "copy-engine 6" "copy-engine 8" "copy-engine off" "nccl 6" "nccl 8"; do
  set -- $v
  if [ "$2" = off ]; then ov="--overlap off"; else ov="--overlap on --overlap-chunks $2"; fi
  timeout 60 $B -q replay $L --synthetic balanced,80:4,95:4,95:1 --exchange $1 $ov --out $OUT/chunks-$1-$2.parquet > $OUT/chunks-$1-$2.txt 2>&1
  echo "$(el) chunks $1 $2 rc=$?" | tee -a $OUT/log.txt
done
for v in "copy-engine on" "copy-engine off" "nccl on" "nccl off"; do
  set -- $v
  nvidia-smi --query-gpu=index,clocks.sm,power.draw,clocks_event_reasons.active --format=csv,noheader,nounits -lms 50 > $OUT/clk-$1-$2.csv 2>&1 &
  P=$!
  timeout 60 $B -q replay --gpus 2 --tokens-per-rank 32768 --policy ep --synthetic balanced --samples 0 --runs 300 --warmup 3 \
    --exchange $1 --overlap $2 --out $OUT/clk-$1-$2.parquet > $OUT/clk-$1-$2.txt 2>&1
  echo "$(el) clocks $1 $2 rc=$?" | tee -a $OUT/log.txt
  kill $P; sleep 1
done
python3 - <<'PY'
import glob, os, pandas as pd
O = os.environ['OUT']
rows = []
for f in sorted(glob.glob(O + '/chunks-*.parquet')):
    t = pd.read_parquet(f)
    for _, r in t.iterrows():
        rows.append((os.path.basename(f)[7:-8], r.scenario, r.policy, r.t_total_ms, r.t_compute_ms, r.t_exposed_comm_ms))
d = pd.DataFrame(rows, columns=['run', 'scen', 'pol', 'total', 'cmp', 'exp'])
print(d.pivot_table(index=['scen', 'pol'], columns='run', values='total').round(2).to_string())
for f in sorted(glob.glob(O + '/clk-*.csv')):
    c = pd.read_csv(f, header=None, names=['gpu', 'sm', 'w', 'why'], skipinitialspace=True)
    c = c[pd.to_numeric(c.w, errors='coerce').notna()]
    c['w'] = c.w.astype(float); c['sm'] = c.sm.astype(float)
    hot = c[c.w > 0.6 * c.w.max()]
    t = pd.read_parquet(f[:-4] + '.parquet')
    print(os.path.basename(f)[4:-4], 'samples', len(hot), 'SM MHz median %.0f' % hot.sm.median(), 'W median %.0f' % hot.w.median(),
          'reasons', hot.why.value_counts().head(2).to_dict(), 'total %.2f compute %.2f' % (t.t_total_ms[0], t.t_compute_ms[0]))
PY
