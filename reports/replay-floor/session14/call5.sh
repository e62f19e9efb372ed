#!/bin/bash
# Session 14, call 5 (2 x H200): the GEMM GPU tests (fused included), gemm-bench lt vs fused, then issue 15's
# gpt-oss layer at 32,768 tokens per GPU through lt and fused (NCCL and copy-engine exchange, overlap on),
# and the reference LLEP layer's forward on the same routing.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 PYTHONUNBUFFERED=1
D=.dev-gpu/f5; B=$D/llep-trace
G=$(nvidia-smi -L | grep -c '^GPU ')
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s]"; }
{ date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader; } > $OUT/smi.txt
mkdir -p /work/main/target/release && cp $B /work/main/target/release/llep-trace
echo "$(el) gpu_gemm tests"
timeout 150 $D/gpu_gemm --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
grep -E "^test |test result|rc=" $OUT/gpu-tests.txt
echo "$(el) gemm-bench"
timeout 120 $B gemm-bench --gemm lt,fused --reps 5 --rows 1024,4096,16384 > $OUT/bench.txt 2>&1
echo "bench rc=$?"; grep -E "gate_up|layer\+act batched|layer\+act fused|^lt +layer |^fused +layer " $OUT/bench.txt
SC=balanced,30:4,50:4,80:4,95:4,95:1
for ex in nccl copy-engine; do for g in lt fused; do
  echo "$(el) layer $ex $g"
  timeout 90 $B -q replay --gpus $G --tokens-per-rank 32768 --synthetic $SC --policy ep,llep --ratio 1.3 \
    --alpha 1.0 --min-gemm 1024 --gemm $g --exchange $ex --with-sim h200 --out $OUT/layer-$ex-$g.parquet > $OUT/layer-$ex-$g.txt 2>&1
  echo "rc=$?"
done; done
echo "$(el) reference forward"
rm -rf /tmp/rt15
timeout 30 $B -q simulate --synthetic $SC --gpus $G --export-routing /tmp/rt15 > /dev/null 2>&1
timeout 150 python3 -m torch.distributed.run --nproc_per_node $G scripts/train_reference.py --forward-only \
  --routing /tmp/rt15 --peer $D/LeastLoadedEP --out $OUT/reference-forward-${G}gpu.csv \
  --warmup 3 --runs 10 > $OUT/reference.log 2>&1
echo "reference rc=$?"
echo "$(el) done"
for f in $OUT/layer-*.txt; do echo "== $f"; grep -E "measured" $f | cut -c1-118; done
