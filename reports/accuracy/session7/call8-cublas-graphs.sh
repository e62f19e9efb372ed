#!/bin/bash
# Session 7, call 8 (2 x H200): --cuda-graphs on through cuBLAS (--gemm cublas) as well as cuBLASLt,
# the Qwen3 decode layer (512 tokens/GPU) and the gpt-oss layer at 2,048, EP and LLEP 1.3.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/cublasg; B=$D/llep-trace
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
for gemm in cublas lt; do for g in on off; do
  timeout 60 $B replay --gpus 2 --synthetic balanced,95:1 --experts 128 --top-k 8 --hidden-size 2048 \
    --intermediate-size 768 --tokens-per-rank 512 --policy ep,llep --ratio 1.3 --gemm $gemm --cuda-graphs $g \
    --out $OUT/qwen3-$gemm-$g.parquet > $OUT/qwen3-$gemm-$g.txt 2>&1; echo "qwen3 $gemm graphs $g rc=$?"
  grep -E "warning|measured" $OUT/qwen3-$gemm-$g.txt | awk '{print $1,$4,$6,$NF}' | head -5
done; done
