#!/bin/bash
# Session 8, call 13 (2 x H200): copies numbered in copy order (route_count, route_scan, route_slots).
# 1 the LLEP training step's check in 6 processes (call 11 gave 7 values 4.8% apart); 2 all GPU tests;
# 3 a decode layer's overhead phase (call 3's decode-ce: 0.06-0.11 ms).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/ce13; B=$D/llep-trace
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt 2>&1
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
T="replay --gpus 2 --tokens-per-rank 2048 --experts 8 --top-k 2 --hidden-size 64 --intermediate-size 32 --synthetic balanced,95:1 --min-gemm 16 --ratio 1.3 --pass train --gemm cublas --warmup 1 --runs 2"
for x in nccl copy-engine; do for i in 1 2 3; do
  timeout 30 $B -q $T --exchange $x --out $OUT/t-$x-$i.parquet > $OUT/t-$x-$i.txt 2>&1 || { echo "fail $x $i"; tail -3 $OUT/t-$x-$i.txt; }
done; done
python3 - <<'PY'
import glob, os, pandas as pd
O = os.environ['OUT']; rows = []
for f in sorted(glob.glob(O + '/t-*.parquet')):
    t = pd.read_parquet(f)
    for _, r in t.iterrows():
        rows.append((os.path.basename(f)[2:-8], r.scenario, r.policy, r.rel_error))
d = pd.DataFrame(rows, columns=['run', 'scen', 'pol', 'err'])
print(d.pivot_table(index=['scen', 'pol'], columns='run', values='err').to_string(float_format=lambda x: '%.9f' % x))
PY
timeout 200 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
timeout 100 $D/gpu_gemm --test-threads 1 >> $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
grep -E "test result|rc=|panicked|FAILED" $OUT/gpu-tests.txt | head
timeout 40 $B replay --gpus 2 --synthetic balanced,30:4,95:1 --experts 128 --top-k 8 --hidden-size 2048 \
  --intermediate-size 768 --tokens-per-rank 512 --policy ep,llep --ratio 1.3 --cuda-graphs on --exchange copy-engine \
  --out $OUT/decode-ce.parquet > $OUT/decode-ce.txt 2>&1; echo "decode rc=$?"
grep measured $OUT/decode-ce.txt | cut -c1-100
