#!/bin/bash
# Session 9, call 6 (2 x H200): the final build after the review's refactors (ExpertUnit::of_blob, the
# batch bound's Dev field removed): all GPU tests; the README's decode example again (graphs on);
# gemm-bench's agreement and batched check at a small shape; a 2-GPU calibrate --gemm-only on 2 shapes.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/v6; B=$D/llep-trace
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
timeout 100 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
timeout 40 $D/gpu_gemm --test-threads 1 >> $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
grep -E "test result|rc=|panicked" $OUT/gpu-tests.txt
timeout 60 $B replay --gpus 2 --synthetic balanced,30:4,95:1 --experts 128 --top-k 8 --hidden-size 2048 \
  --intermediate-size 768 --tokens-per-rank 512 --ratio 1.3 --cuda-graphs on --with-sim h200 \
  --out $OUT/decode-graphs-on.parquet > $OUT/decode-graphs-on.txt 2>$OUT/decode-graphs-on.err; echo "decode rc=$?"
grep measured $OUT/decode-graphs-on.txt | cut -c1-80
CUDA_VISIBLE_DEVICES=0 timeout 60 $B calibrate --gpus 1 --gemm-only --gemm lt --cuda-graphs on --base h200 --grid-shapes 2048:768,2880:2880 \
  --out $OUT/gemm-graphs-2.json > $OUT/gemm-graphs-2.txt 2>&1; echo "calibrate rc=$?"
python3 -c "import json;p=json.load(open('$OUT/gemm-graphs-2.json'));print('measured', p.get('measured'))"
