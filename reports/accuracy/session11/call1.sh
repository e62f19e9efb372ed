#!/bin/bash
# Session 11, call 1 (2 x H200): session 10's last commit (3afdf53), whose GPU-path change (LLEP_TRACE_HOST_TIMING
# read once per worker) never ran on a GPU. 1 the GPU tests (gpu_replay, gpu_gemm); 2 the host checkpoints of
# llep-auto's decision on the five matrix shapes at 128 and 2,048 tok/GPU (graphs), the "before" of this session.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/s11c1; B=$D/llep-trace
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
timeout 120 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
timeout 60 $D/gpu_gemm --test-threads 1 >> $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
grep -E "test result|rc=|panicked" $OUT/gpu-tests.txt
S=("gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "olmoe 64 8 2048 1024" "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336")
for t in 128 2048; do for shape in "${S[@]}"; do set -- $shape
  LLEP_TRACE_HOST_TIMING=1 timeout 60 $B replay -q --gpus 2 --synthetic 30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --experts $2 --top-k $3 --hidden-size $4 --intermediate-size $5 --tokens-per-rank $t \
    --samples 8 --runs 10 --warmup 3 --cuda-graphs on --out $OUT/ht-$1-$t.parquet > $OUT/ht-$1-$t.txt 2>&1 || echo "FAILED $1 $t"
done; done
grep -h -A12 "host" $OUT/ht-qwen3-2048.txt | head -30
echo "total $(( $(date +%s) - t0 ))s"
