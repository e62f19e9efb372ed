#!/bin/bash
# Session 8, call 12 (2 x H200): which part of the LLEP training step's check varies between processes
# (call 11: only LLEP at 95:1, through NCCL and the copy engines alike)? The same tiny layer, 5 processes, the
# check's parts from the status line.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
B=.dev-gpu/ce11/llep-trace
T="replay --gpus 2 --tokens-per-rank 2048 --experts 8 --top-k 2 --hidden-size 64 --intermediate-size 32 --synthetic 95:1 --min-gemm 16 --ratio 1.3 --pass train --policy llep --gemm cublas --warmup 1 --runs 2"
for i in 1 2 3 4 5 6; do
  timeout 30 $B $T > $OUT/out-$i.txt 2> $OUT/err-$i.txt
  tr '\r' '\n' < $OUT/err-$i.txt | grep -o "rel err forward.*" | tail -1
done
