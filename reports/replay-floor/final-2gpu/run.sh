#!/bin/bash
# Lead, final call: GPU integration tests of merged main (gpu_replay,
# gpu_gemm), then issue 15's layer with the merged binary (--gemm lt, overlap
# on and off) and the reference LLEP layer's forward on the same routing.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 PYTHONUNBUFFERED=1
D=.dev-gpu/lead4; B=$D/llep-trace
G=$(nvidia-smi -L | grep -c '^GPU ')
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s]"; }
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
mkdir -p /work/main/target/release
cp $B /work/main/target/release/llep-trace
echo "$(el) gpu tests"
timeout 150 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
timeout 60 $D/gpu_gemm --test-threads 1 >> $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
grep -E "test result|rc=|FAILED|panicked" $OUT/gpu-tests.txt
echo "$(el) layer, overlap on/off"
SC=balanced,30:4,50:4,80:4,95:4,95:1
for ov in on off; do
  timeout 60 $B -q replay --gpus $G --tokens-per-rank 32768 --synthetic $SC --policy ep,llep --ratio 1.3 \
    --alpha 1.0 --min-gemm 1024 --overlap $ov --with-sim h200 --out $OUT/layer-$ov.parquet > $OUT/layer-$ov.txt 2>&1
  echo "overlap $ov rc=$?"
done
echo "$(el) reference forward"
rm -rf /tmp/rt15
timeout 30 $B -q simulate --synthetic $SC --gpus $G --export-routing /tmp/rt15 > /dev/null 2>&1
timeout 150 python3 -m torch.distributed.run --nproc_per_node $G scripts/train_reference.py --forward-only \
  --routing /tmp/rt15 --peer .dev-gpu/peers/LeastLoadedEP --out $OUT/reference-forward-${G}gpu.csv \
  --warmup 3 --runs 10 > $OUT/reference.log 2>&1
echo "reference rc=$?"; grep -E "lambda" $OUT/reference.log | tail -12
echo "$(el) done"
grep -E "measured" $OUT/layer-on.txt | cut -c1-120
grep -E "measured" $OUT/layer-off.txt | cut -c1-120
