#!/bin/bash
# Session 7, call 9 (2 x H200): GPU tests of final main (after the review mends (graphs launch helper, miss counting)
# UnitBufs), and the decode layer with and without graphs (EP, LLEP 1.3, llep-auto) as a check.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/graphs9; B=$D/llep-trace
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
timeout 200 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
timeout 100 $D/gpu_gemm --test-threads 1 >> $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
grep -E "test result|rc=|panicked" $OUT/gpu-tests.txt
for g in on off; do
  timeout 60 $B replay --gpus 2 --synthetic balanced,30:4,95:1 --experts 128 --top-k 8 --hidden-size 2048 \
    --intermediate-size 768 --tokens-per-rank 512 --policy ep,llep --ratio 1.3,auto --cuda-graphs $g --with-sim h200 \
    --out $OUT/decode-$g.parquet > $OUT/decode-$g.txt 2>&1; echo "decode $g rc=$?"
done
grep -E "measured" $OUT/decode-on.txt | head -9
