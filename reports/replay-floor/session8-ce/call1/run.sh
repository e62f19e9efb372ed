#!/bin/bash
# Session 8, call 1 (2 x H200): copy-engine exchange (--exchange copy-engine) against NCCL's:
# GPU tests (bit-for-bit against NCCL), then the gpt-oss layer at 32,768 tokens/GPU (overlap on and off),
# and the Qwen3 layer at 2,048 and 8,192 tokens/GPU.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/ce1; B=$D/llep-trace
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nvidia-smi topo -m; } > $OUT/smi.txt 2>&1
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
timeout 150 $D/gpu_replay --test-threads 1 copy_engine overlap > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
grep -E "test result|rc=|panicked|assert" $OUT/gpu-tests.txt | head
G="--hidden-size 2880 --intermediate-size 2880 --experts 128 --top-k 4"
for ov in on off; do for x in nccl copy-engine; do
  timeout 120 $B replay --gpus 2 --tokens-per-rank 32768 --synthetic balanced,50:4,95:4,95:1 --policy ep,llep --ratio 1.3 \
    --alpha 1.0 --min-gemm 1024 --overlap $ov --exchange $x --samples 8 --runs 10 --warmup 3 --with-sim h200 \
    --out $OUT/gptoss-$ov-$x.parquet > $OUT/gptoss-$ov-$x.txt 2>&1
  echo "gptoss overlap $ov $x rc=$? $(( $(date +%s) - t0 ))s" | tee -a $OUT/log.txt
done; done
Q="--experts 128 --top-k 8 --hidden-size 2048 --intermediate-size 768"
for t in 2048 8192; do for x in nccl copy-engine; do
  timeout 90 $B replay --gpus 2 --tokens-per-rank $t --synthetic balanced,95:1 --policy ep,llep --ratio 1.3 $Q \
    --exchange $x --cuda-graphs on --samples 8 --runs 10 --warmup 3 --out $OUT/qwen3-$t-$x.parquet > $OUT/qwen3-$t-$x.txt 2>&1
  echo "qwen3 $t $x rc=$? $(( $(date +%s) - t0 ))s" | tee -a $OUT/log.txt
done; done
python3 - <<'PY'
import glob, os, pyarrow.parquet as pq
for f in sorted(glob.glob(os.environ['OUT'] + '/*.parquet')):
    t = pq.read_table(f).to_pandas()
    t = t[t.source == 'measured'] if 'source' in t else t
    for _, r in t.iterrows():
        print(f"{os.path.basename(f)[:-8]:24s} {r.scenario:9s} {r.policy:5s} {r.t_total_ms:7.2f} cmp {r.t_compute_ms:6.2f} exp {r.t_exposed_comm_ms:5.2f} xfer {r.t_transfer_ms:5.2f} err {r.rel_error:.1e}")
PY
