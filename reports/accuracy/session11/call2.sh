#!/bin/bash
# Session 11, call 2 (2 x H200): llep-auto's decision with fewer instructions (per-GPU sums in registers, no
# division for one-unit groups, chunk cuts by binary search, groups walked with the chunks): 1 GPU tests on
# this build; 2 host checkpoints, 3afdf53's build against this one, in turns, five shapes x 128 and 2,048
# tok/GPU, graphs; 3 a diagnostic build (3afdf53 + decide3.patch) that decides three times in a row on rank 0
# and prints each one's time: is the lent host's decision slow because its caches are cold, or slow warm too?
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/s11c2; B=$D/llep-trace
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc; lscpu | grep -E "Model name|MHz|L2|L3"; } > $OUT/smi.txt
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
timeout 120 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
grep -E "test result|rc=|panicked" $OUT/gpu-tests.txt
S=("gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "olmoe 64 8 2048 1024" "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336")
one() { # tag binary name E k D I T
  LLEP_TRACE_HOST_TIMING=1 timeout 60 $2 replay -q --gpus 2 --synthetic 30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --experts $4 --top-k $5 --hidden-size $6 --intermediate-size $7 --tokens-per-rank $8 \
    --samples 8 --runs 10 --warmup 3 --cuda-graphs on --out $OUT/$1-$3-$8.parquet > $OUT/$1-$3-$8.txt 2>&1 || echo "FAILED $1 $3 $8"
}
for t in 128 2048; do for shape in "${S[@]}"; do
  one old $D/llep-trace-old $shape $t; one new $B $shape $t
done; done
for t in 128 2048; do for shape in "${S[@]}"; do one d3 $D/llep-trace-d3 $shape $t; done; done
for f in $OUT/old-*.txt; do n=$(basename $f .txt); n=${n#old-}
  for tag in old new; do echo "$tag $n $(grep 'llep-auto:' $OUT/$tag-$n.txt | awk '{printf "%s dec=%.1f ", $3, $11-$9}')"; done
done
for f in $OUT/d3-*.txt; do echo "$(basename $f .txt) $(grep decide3 $f | awk '{a+=$2;b+=$3;c+=$4;n++} END {if(n) printf "n=%d first %.1f second %.1f third %.1f (means)", n, a/n, b/n, c/n}')"; done
echo "total $(( $(date +%s) - t0 ))s"
