#!/bin/bash
# Session 15, call 7 (2 x H200): the first chunk's rows packed first. Same lease: the build before it
# (llep-trace-before, e3d10c0) and after, in turns; then every GPU test of gpu_replay on the new build.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/g7; O=/tmp/g7; mkdir -p $O
G=$(nvidia-smi -L | grep -c '^GPU ')
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s]"; }
{ date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader; } > $O/smi.txt
SC=balanced,50:4,80:4,95:4,95:1
for turn in 1 2; do for b in before after; do for ex in copy-engine nccl; do
  B=$D/llep-trace; [ $b = before ] && B=$D/llep-trace-before
  timeout 100 $B -q replay --gpus $G --tokens-per-rank 32768 --synthetic $SC --policy ep,llep --ratio 1.3 \
    --alpha 1.0 --min-gemm 1024 --gemm fused --exchange $ex --with-sim h200 \
    --out $O/layer-$b-$ex-$turn.parquet > $O/layer-$b-$ex-$turn.txt 2>&1
  echo "$(el) $turn $b $ex rc=$?"
done; done; done
python3 - <<'PY'
import pyarrow.parquet as pq
d={}
for turn in [1,2]:
  for b in ['before','after']:
    for ex in ['copy-engine','nccl']:
        t=pq.read_table(f'/tmp/g7/layer-{b}-{ex}-{turn}.parquet').to_pandas()
        for r in t.itertuples():
            d[(turn,b,ex,r.scenario,r.policy,r.source)]=r
print('exchange scenario policy | before t1 t2 | after t1 t2 | after exposed | after sim')
for ex in ['copy-engine','nccl']:
  for sc in ['balanced','50:4','80:4','95:4','95:1']:
    pol='ep' if sc=='balanced' else 'llep'
    g=lambda t,b: d[(t,b,ex,sc,pol,'measured')]
    s=d[(1,'after',ex,sc,pol,'simulated')]
    print(ex, sc, pol, '|', f'{g(1,"before").t_total_ms:.2f} {g(2,"before").t_total_ms:.2f}', '|', f'{g(1,"after").t_total_ms:.2f} {g(2,"after").t_total_ms:.2f}', '|', f'{g(1,"before").t_exposed_comm_ms:.2f} -> {g(1,"after").t_exposed_comm_ms:.2f}', '|', f'{s.t_total_ms:.2f}', f'{g(1,"after").rel_error:.1e}')
PY
mkdir -p /work/main/target/release && cp $D/llep-trace /work/main/target/release/llep-trace
timeout 300 $D/gpu_replay --test-threads 1 > $O/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $O/gpu-tests.txt
grep -E "test result|rc=|panicked|FAILED" $O/gpu-tests.txt
tar czf $OUT/g7.tgz -C /tmp g7
