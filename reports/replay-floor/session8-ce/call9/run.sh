#!/bin/bash
# Session 8, call 9 (2 x H200; call 5 again after the gradient-pull fix): the copy engines in the training step (backward exchanges, weight-gradient
# pulls). 1 all GPU tests (bit for bit against NCCL incl. train and EPLB); 2 the gpt-oss layer's training step
# at 8,192 and 32,768 tokens/GPU, NCCL against copy engines, --with-sim h200.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/ce5; B=$D/llep-trace
t0=$(date +%s); el() { echo "$(( $(date +%s) - t0 ))s"; }
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt 2>&1
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
timeout 240 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
timeout 100 $D/gpu_gemm --test-threads 1 >> $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
echo "$(el) tests" >> $OUT/log.txt
grep -E "test result|rc=|panicked|FAILED" $OUT/gpu-tests.txt | head
for t in 8192 32768; do for x in nccl copy-engine; do
  timeout 120 $B replay --gpus 2 --tokens-per-rank $t --synthetic balanced,30:4,80:4,95:1 --policy ep,llep --ratio 1.3 \
    --alpha 1.0 --min-gemm 1024 --pass train --exchange $x --samples 8 --runs 10 --warmup 3 --with-sim h200 \
    --out $OUT/train-$t-$x.parquet > $OUT/train-$t-$x.txt 2>&1
  echo "$(el) train $t $x rc=$?" | tee -a $OUT/log.txt
done; done
python3 - <<'PY'
import glob, os, pandas as pd
O = os.environ['OUT']
for f in sorted(glob.glob(O + '/train-*.parquet')):
    t = pd.read_parquet(f); m = t[t.source == 'measured'].reset_index(drop=True); s = t[t.source == 'simulated'].reset_index(drop=True)
    for i, r in m.iterrows():
        print(f"{os.path.basename(f)[6:-8]:18s} {r.scenario:9s} {r.policy:5s} {r.t_total_ms:7.2f} sim {s.t_total_ms[i]:7.2f} bwd-disp {r.t_bwd_dispatch_ms:5.2f} gret {r.t_grad_return_ms:5.2f} err {r.rel_error:.1e}")
PY
